// Megatron's VocabParallelEmbedding: each TP rank owns a contiguous slice of the vocabulary's
// rows; tokens outside the slice look up zeros, and an all-reduce (site "embed.fwd") sums the
// slices into the full embedding on every rank. Backward needs no communication: each rank
// scatters the (replicated) output gradient into its own rows.
// The same table is the output layer (tied embedding): logits for the rank's vocab slice.
#pragma once
#include <cstdint>

#include "models/param_store.h"
#include "sim/comm.h"

namespace lossytp {

class VocabParallelEmbedding {
 public:
  VocabParallelEmbedding(ParamStore& store, int vocab, int C, float std);
  int vocab_start() const { return vocab_start_; }
  int vocab_local() const { return vocab_local_; }
  int weight_index() const { return w_; }

  void forward(float* out, const int32_t* tok, int N, Comm& tp);
  void backward(const float* dout, const int32_t* tok, int N);

  // Output layer: logits[N, V/tp] = x[N, C] @ table_shard^T (x replicated: copy_to_tp_region).
  void logits_forward(float* logits, const float* x, int N);
  // dtable += dlogits^T x; dx = dlogits @ table_shard, all-reduced over TP at "head.bwd"
  // unless reduce is false (CAAT keeps it a partial sum).
  void logits_backward(float* dx, const float* dlogits, const float* x, int N, Comm& tp,
                       bool reduce = true);

 private:
  ParamStore& store_;
  int w_, C_, vocab_start_, vocab_local_;
};

}  // namespace lossytp
