// Megatron's VocabParallelEmbedding: each TP rank owns a contiguous slice of the vocabulary's
// rows; tokens outside the slice look up zeros, and an all-reduce (site "embed.fwd") sums the
// slices into the full embedding on every rank. Backward needs no communication: each rank
// scatters the (replicated) output gradient into its own rows. The table has the padded
// vocabulary's rows (ModelConfig::padded_vocab_size); with tied weights it is also the output
// layer (models/output_layer.h).
// Under --sequence-parallel without learned positions the slices are reduce-scattered instead
// (forward_scattered, Megatron's reduce_scatter_embeddings), leaving each rank its N/tp rows;
// with learned positions GPTModel all-reduces, adds them and keeps its rows, as Megatron's
// LanguageModelEmbedding. Either way the backward gets the all-gathered gradient ("embed.bwd").
#pragma once
#include <cstdint>

#include "models/param_store.h"
#include "models/workspace.h"
#include "sim/comm.h"

namespace lossytp {

class VocabParallelEmbedding {
 public:
  // vocab: the padded vocabulary (a multiple of tp).
  VocabParallelEmbedding(ParamStore& store, int vocab, int C, float std);
  int vocab_start() const { return vocab_start_; }
  int vocab_local() const { return vocab_local_; }
  int weight_index() const { return w_; }

  void forward(float* out, const int32_t* tok, int N, Comm& tp);
  // shard: this rank's [N/tp, C] rows of the summed embedding, reduce-scattered at "embed.fwd".
  void forward_scattered(float* shard, const int32_t* tok, int N, Comm& tp, Workspace& ws);
  // dout: the gradient of all N rows (replicated).
  void backward(const float* dout, const int32_t* tok, int N);

 private:
  ParamStore& store_;
  int w_, C_, vocab_start_, vocab_local_;
};

}  // namespace lossytp
