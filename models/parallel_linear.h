// Megatron's two tensor-parallel linear layers. Weights are [out, in] (y = x W^T + b).
//  ColumnParallelLinear: the output dim is split; input replicated -> output shard.
//  RowParallelLinear:    the input dim is split; input shard -> replicated output, after an
//                        all-reduce of the partial sums, with the bias added after the reduce.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "models/config.h"
#include "models/param_store.h"
#include "sim/comm.h"
#include "sim/tensor.h"

namespace lossytp {

// Elements all-reduced over TP per micro-batch, by site (for --dry-run's traffic estimate).
using SiteElements = std::map<std::string, double>;

class ColumnParallelLinear {
 public:
  // bias: Megatron's add_bias_linear. stride: the output rows are `stride` equal parts, each
  // split over TP (SwiGLU's fc1 = [gate; up], so a rank holds [gate_r; up_r]).
  ColumnParallelLinear(ParamStore& store, const std::string& name, int in, int out, float std,
                       TPOptions opt = {}, bool bias = true, int stride = 1);
  int in() const { return in_; }
  int out_local() const { return out_local_; }
  void comm_elements(int N, SiteElements& e) const;
  // y[N, out/tp] = x[N, in] @ W_shard^T + b_shard      (copy_to_tp_region: identity forward)
  void forward(float* y, const float* x, int N);
  // dW, db += ...; dx[N, in] = dy @ W_shard, then all-reduced over TP at site "<name>.bwd"
  // (copy_to_tp_region backward; not under CAAT, where dx stays a partial sum). dx is overwritten.
  void backward(float* dx, const float* dy, const float* x, int N, Comm& tp);

 private:
  ParamStore& store_;
  int w_, b_, in_, out_local_;
  TPOptions opt_;
  std::string bwd_site_;
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
  void forward(float* y, const float* x, int N, Comm& tp);
  // dW += dy^T x; db += sum dy; dx_shard = dy @ W_shard (overwritten; identity backward of
  // the reduce since dy is replicated). Under CAAT, dy is a per-rank partial sum and the
  // backward of the partial reduce runs first (site "<name>.bwd").
  void backward(float* dx, const float* dy, const float* x, int N, Comm& tp);

 private:
  ParamStore& store_;
  int w_, b_, in_local_, out_;
  TPOptions opt_;
  std::string fwd_site_, bwd_site_;
  Tensor pack_, dy_;
};

}  // namespace lossytp
