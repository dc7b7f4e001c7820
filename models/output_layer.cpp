#include "models/output_layer.h"

#include <algorithm>

#include "kernels/ops.h"
#include "models/linear.h"
#include "models/mappings.h"

namespace lossytp {

OutputLayer::OutputLayer(ParamStore& store, const ModelConfig& cfg, int tied_weight, TPOptions opt)
    : store_(store), C_(cfg.hidden_size), sp_(opt.sequence_parallel) {
  const int Vp = cfg.padded_vocab_size(store.tp_size());
  w_ = tied_weight >= 0
           ? tied_weight
           : store.declare("output_layer.weight", {Vp, cfg.hidden_size}, 0, Init::Normal, cfg.init_std, true);
  vocab_local_ = Vp / store.tp_size();
  vocab_start_ = store.tp_rank() * vocab_local_;
  valid_local_ = std::clamp(cfg.vocab_size - vocab_start_, 0, vocab_local_);
}

void OutputLayer::forward(float* logits, const float* x, int N, Comm& tp, Workspace& ws) {
  if (sp_) {
    float* full = ws.get("sp.full", static_cast<size_t>(N) * C_);
    gather_from_sp_region(tp, x, full, N, C_, "head.fwd");
    x = full;
  } else {
    copy_to_tp_region_forward();
  }
  linear_forward(store_.compute(), logits, x, store_.value(w_), nullptr, N, C_, vocab_local_);
  if (valid_local_ < vocab_local_)
    ops::fill_cols(store_.device(), logits, N, vocab_local_, valid_local_, vocab_local_, -1e30f);
}

void OutputLayer::backward(float* dx, const float* dlogits, const float* x, int N, Comm& tp,
                           bool reduce, Workspace& ws) {
  if (sp_) {
    float* full = ws.get("sp.full", static_cast<size_t>(N) * C_);
    float* dfull = ws.get("sp.full_dx", static_cast<size_t>(N) * C_);
    gather_from_sp_region(tp, x, full, N, C_, "head.regather.bwd");
    linear_backward(store_.compute(), dfull, store_.grad(w_), nullptr, dlogits, full, store_.value(w_),
                    N, C_, vocab_local_);
    reduce_scatter_to_sp_region(tp, dfull, dx, N, C_, "head.bwd");
    return;
  }
  linear_backward(store_.compute(), dx, store_.grad(w_), nullptr, dlogits, x, store_.value(w_), N,
                  C_, vocab_local_);
  if (reduce) copy_to_tp_region_backward(tp, dx, static_cast<size_t>(N) * C_, "head.bwd");
}

void OutputLayer::comm_elements(int N, bool reduce, SiteElements& e) const {
  const double n = static_cast<double>(N) * C_;
  if (sp_) {
    for (const char* s : {"head.fwd", "head.regather.bwd", "head.bwd"}) e.gathered[s] += n;
    return;
  }
  if (reduce) e["head.bwd"] += n;
}

}  // namespace lossytp
