#include "models/output_layer.h"

#include <algorithm>

#include "kernels/ops.h"
#include "models/linear.h"
#include "models/mappings.h"

namespace lossytp {

OutputLayer::OutputLayer(ParamStore& store, const ModelConfig& cfg, int tied_weight)
    : store_(store), C_(cfg.hidden_size) {
  const int Vp = cfg.padded_vocab_size(store.tp_size());
  w_ = tied_weight >= 0
           ? tied_weight
           : store.declare("output_layer.weight", {Vp, cfg.hidden_size}, 0, Init::Normal, cfg.init_std, true);
  vocab_local_ = Vp / store.tp_size();
  vocab_start_ = store.tp_rank() * vocab_local_;
  valid_local_ = std::clamp(cfg.vocab_size - vocab_start_, 0, vocab_local_);
}

void OutputLayer::forward(float* logits, const float* x, int N) {
  copy_to_tp_region_forward();
  linear_forward(store_.compute(), logits, x, store_.value(w_), nullptr, N, C_, vocab_local_);
  if (valid_local_ < vocab_local_)
    ops::fill_cols(store_.device(), logits, N, vocab_local_, valid_local_, vocab_local_, -1e30f);
}

void OutputLayer::backward(float* dx, const float* dlogits, const float* x, int N, Comm& tp,
                           bool reduce) {
  linear_backward(store_.compute(), dx, store_.grad(w_), nullptr, dlogits, x, store_.value(w_), N,
                  C_, vocab_local_);
  if (reduce) copy_to_tp_region_backward(tp, dx, static_cast<size_t>(N) * C_, "head.bwd");
}

void OutputLayer::comm_elements(int N, bool reduce, SiteElements& e) const {
  if (reduce) e["head.bwd"] += static_cast<double>(N) * C_;
}

}  // namespace lossytp
