#include "models/adamw.h"

#include "kernels/ops.h"

namespace lossytp {

AdamW::AdamW(ParamStore& store, AdamWConfig cfg)
    : store_(store), cfg_(cfg), m_({static_cast<int64_t>(store.numel())}, store.device()),
      v_({static_cast<int64_t>(store.numel())}, store.device()) {}

void AdamW::step(float lr) {
  ++t_;
  for (size_t i = 0; i < store_.specs().size(); ++i) {
    const ParamSpec& s = store_.spec(static_cast<int>(i));
    ops::adamw_update(store_.device(), store_.value(static_cast<int>(i)), store_.grad(static_cast<int>(i)),
                      m_.data() + s.offset, v_.data() + s.offset, s.numel(), lr, cfg_.beta1,
                      cfg_.beta2, cfg_.eps, s.weight_decay ? cfg_.weight_decay : 0.0f, t_);
  }
}

}  // namespace lossytp
