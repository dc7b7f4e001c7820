// Megatron's two tensor-parallel linear layers. Weights are [out, in] (y = x W^T + b).
//  ColumnParallelLinear: the output dim is split; input replicated -> output shard.
//  RowParallelLinear:    the input dim is split; input shard -> replicated output, after an
//                        all-reduce of the partial sums, with the bias added after the reduce.
// Under --sequence-parallel (TPOptions::sequence_parallel) the replicated side is instead split
// along the N token rows (N/tp rows per rank, Megatron's sequence-parallel region): the column
// layer all-gathers its input at "<name>.fwd" (gather_from_sequence_parallel_region), reduce-
// scatters its input gradient at "<name>.bwd" and, for the weight gradient, all-gathers the
// input again at "<name>.regather.bwd" (Megatron keeps only the shard from forward to backward);
// the row layer reduce-scatters its output at "<name>.fwd" (reduce_scatter_to_sequence_parallel_
// region) and all-gathers its output gradient at "<name>.bwd". N is always the full token count;
// the full-row temporaries live in the part's Workspace.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "models/config.h"
#include "models/param_store.h"
#include "models/workspace.h"
#include "sim/comm.h"
#include "sim/tensor.h"

namespace lossytp {

// Elements each TP site moves per micro-batch (for --dry-run's traffic estimate): e[site] (=
// e.all_reduce[site]) elements all-reduced; e.gathered[site] elements all-gathered or reduce-
// scattered, the full tensor (each rank's block is 1/tp of it; --sequence-parallel).
struct SiteElements {
  std::map<std::string, double> all_reduce, gathered;
  double& operator[](const std::string& site) { return all_reduce[site]; }
};

class ColumnParallelLinear {
 public:
  // bias: Megatron's add_bias_linear. stride: the output rows are `stride` equal parts, each
  // split over TP (SwiGLU's fc1 = [gate; up], so a rank holds [gate_r; up_r]).
  ColumnParallelLinear(ParamStore& store, const std::string& name, int in, int out, float std,
                       TPOptions opt = {}, bool bias = true, int stride = 1);
  int in() const { return in_; }
  int out_local() const { return out_local_; }
  void comm_elements(int N, SiteElements& e) const;
  // y[N, out/tp] = x[N, in] @ W_shard^T + b_shard      (copy_to_tp_region: identity forward;
  // sequence-parallel: x is this rank's [N/tp, in] rows, all-gathered first)
  void forward(float* y, const float* x, int N, Comm& tp, Workspace& ws);
  // dW, db += ...; dx[N, in] = dy @ W_shard, then all-reduced over TP at site "<name>.bwd"
  // (copy_to_tp_region backward; not under CAAT, where dx stays a partial sum). dx is overwritten.
  // Sequence-parallel: x and dx are [N/tp, in] rows; dx is reduce-scattered.
  void backward(float* dx, const float* dy, const float* x, int N, Comm& tp, Workspace& ws);

 private:
  ParamStore& store_;
  int w_, b_, in_, out_local_;
  TPOptions opt_;
  std::string fwd_site_, bwd_site_, regather_site_;
};

class RowParallelLinear {
 public:
  RowParallelLinear(ParamStore& store, const std::string& name, int in, int out, float std,
                    TPOptions opt = {}, bool bias = true);
  int in_local() const { return in_local_; }
  int out() const { return out_; }
  void comm_elements(int N, SiteElements& e) const;
  // y[N, out] = all-reduce over TP of x_shard[N, in/tp] @ W_shard^T, then + b, at site
  // "<name>.fwd" (reduce_from_tp_region; under CAAT the partial reduce). y is overwritten.
  // Sequence-parallel: reduce-scattered instead; y is this rank's [N/tp, out] rows.
  void forward(float* y, const float* x, int N, Comm& tp, Workspace& ws);
  // dW += dy^T x; db += sum dy; dx_shard = dy @ W_shard (overwritten; identity backward of
  // the reduce since dy is replicated). Under CAAT, dy is a per-rank partial sum and the
  // backward of the partial reduce runs first (site "<name>.bwd"). Sequence-parallel: dy is
  // [N/tp, out] rows, all-gathered at "<name>.bwd"; db sums this rank's rows only (a partial
  // sum, summed over TP at "replicated.grad" as Megatron all-reduces sequence-parallel grads).
  void backward(float* dx, const float* dy, const float* x, int N, Comm& tp, Workspace& ws);

 private:
  ParamStore& store_;
  int w_, b_, in_local_, out_;
  TPOptions opt_;
  std::string fwd_site_, bwd_site_;
  Tensor pack_, dy_;
};

}  // namespace lossytp
