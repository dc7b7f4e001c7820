#include "models/vocab_parallel_embedding.h"

#include "kernels/ops.h"
#include "models/mappings.h"

namespace lossytp {

VocabParallelEmbedding::VocabParallelEmbedding(ParamStore& store, int vocab, int C, float std)
    : store_(store), C_(C) {
  w_ = store.declare("embed.weight", {vocab, C}, 0, Init::Normal, std, true);
  vocab_local_ = vocab / store.tp_size();
  vocab_start_ = store.tp_rank() * vocab_local_;
}

void VocabParallelEmbedding::forward(float* out, const int32_t* tok, int N, Comm& tp) {
  ops::embedding_forward(store_.device(), out, tok, store_.value(w_), N, C_, vocab_start_, vocab_local_);
  reduce_from_tp_region_forward(tp, out, static_cast<size_t>(N) * C_, "embed.fwd");
}

void VocabParallelEmbedding::forward_scattered(float* shard, const int32_t* tok, int N, Comm& tp,
                                               Workspace& ws) {
  float* full = ws.get("sp.full", static_cast<size_t>(N) * C_);
  ops::embedding_forward(store_.device(), full, tok, store_.value(w_), N, C_, vocab_start_, vocab_local_);
  reduce_scatter_to_sp_region(tp, full, shard, N, C_, "embed.fwd");
}

void VocabParallelEmbedding::backward(const float* dout, const int32_t* tok, int N) {
  reduce_from_tp_region_backward();
  ops::embedding_backward(store_.device(), store_.grad(w_), tok, dout, N, C_, vocab_start_, vocab_local_);
}

}  // namespace lossytp
