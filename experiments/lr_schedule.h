// Megatron's learning-rate schedule: linear warmup to lr, then cosine decay to min_lr at the
// last iteration. `iteration` counts from 0 (the update being made).
#pragma once
#include <algorithm>
#include <cmath>

namespace lossytp {

inline float lr_at(int iteration, float lr, float min_lr, int warmup, int total) {
  if (warmup > 0 && iteration < warmup) return lr * static_cast<float>(iteration + 1) / warmup;
  const int decay = std::max(1, total - warmup);
  const double progress = std::min(1.0, static_cast<double>(iteration - warmup) / decay);
  return static_cast<float>(min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress)));
}

}  // namespace lossytp
