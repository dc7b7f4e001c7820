#include "models/adamw.h"

#include <algorithm>

#include "kernels/ops.h"

namespace lossytp {

size_t optimizer_shard_numel(size_t numel, int shards) {
  const size_t block = size_t{16} * static_cast<size_t>(shards);
  return (numel + block - 1) / block * block / static_cast<size_t>(shards);
}

AdamW::AdamW(ParamStore& store, AdamWConfig cfg) : AdamW(store, cfg, 0, store.numel(), 1) {}

AdamW::AdamW(ParamStore& store, AdamWConfig cfg, size_t begin, size_t n, int shards)
    : store_(store), cfg_(cfg), begin_(begin), n_(n), shards_(shards),
      m_({static_cast<int64_t>(n)}, store.device()), v_({static_cast<int64_t>(n)}, store.device()) {}

void AdamW::step(float lr) { step(lr, store_.grads().data() + begin_); }

void AdamW::step(float lr, const float* grad) {
  ++t_;
  // Each parameter's part inside [begin_, begin_ + n_): the whole of it without sharding. The
  // update is elementwise, so a parameter split between two shards gets the same numbers.
  const size_t end = begin_ + n_;
  for (size_t i = 0; i < store_.specs().size(); ++i) {
    const ParamSpec& s = store_.spec(static_cast<int>(i));
    const size_t lo = std::max(s.offset, begin_), hi = std::min(s.offset + s.numel(), end);
    if (lo >= hi) continue;
    const size_t k = lo - begin_;
    ops::adamw_update(store_.device(), store_.values().data() + lo, grad + k, m_.data() + k,
                      v_.data() + k, hi - lo, lr, cfg_.beta1, cfg_.beta2, cfg_.eps,
                      s.weight_decay ? cfg_.weight_decay : 0.0f, t_);
  }
}

}  // namespace lossytp
