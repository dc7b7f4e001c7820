#include "models/rotary.h"

#include <cmath>
#include <vector>

#include "kernels/ops.h"

namespace lossytp {

RotaryEmbedding::RotaryEmbedding(const ModelConfig& cfg, Device dev)
    : dev_(dev), hd_(cfg.head_dim()), rot_(cfg.rotary_dim()) {
  const int T = cfg.seq_length, h = rot_ / 2;
  std::vector<float> c(static_cast<size_t>(T) * h), s(c.size());
  for (int i = 0; i < h; ++i) {
    // fp32 inverse frequencies and angles, as Hugging Face's LlamaRotaryEmbedding computes them
    // (at position 8000 an fp32 angle is ~5e-4 rad off the exact one: matching it matters).
    const float inv = static_cast<float>(1.0 / std::pow(cfg.rotary_base, 2.0 * i / rot_));
    for (int t = 0; t < T; ++t) {
      const float a = static_cast<float>(t) * inv;
      c[static_cast<size_t>(t) * h + i] = static_cast<float>(std::cos(static_cast<double>(a)));
      s[static_cast<size_t>(t) * h + i] = static_cast<float>(std::sin(static_cast<double>(a)));
    }
  }
  cos_ = Tensor({T, h}, dev);
  sin_ = Tensor({T, h}, dev);
  cos_.copy_from_host(c.data());
  sin_.copy_from_host(s.data());
}

void RotaryEmbedding::forward(float* qkv, int B, int T, int heads, int groups) const {
  ops::rope_forward(dev_, qkv, cos_.data(), sin_.data(), B, T, heads, groups, hd_, rot_);
}

void RotaryEmbedding::backward(float* dqkv, int B, int T, int heads, int groups) const {
  ops::rope_backward(dev_, dqkv, cos_.data(), sin_.data(), B, T, heads, groups, hd_, rot_);
}

}  // namespace lossytp
