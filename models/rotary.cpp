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
    float inv = static_cast<float>(1.0 / std::pow(cfg.rotary_base, 2.0 * i / rot_));
    if (cfg.use_rope_scaling) {  // Llama 3.x, in fp32 as Hugging Face's _compute_llama3_parameters
      const float factor = static_cast<float>(cfg.rope_scaling_factor);
      const float lo = static_cast<float>(cfg.rope_scaling_low_freq_factor);
      const float hi = static_cast<float>(cfg.rope_scaling_high_freq_factor);
      const float old_ctx = static_cast<float>(cfg.rope_scaling_original_max_position);
      const float wavelen = 2.0f * static_cast<float>(M_PI) / inv;
      if (wavelen > old_ctx / lo) {
        inv = inv / factor;
      } else if (!(wavelen < old_ctx / hi)) {
        const float smooth = (old_ctx / wavelen - lo) / (hi - lo);
        inv = (1.0f - smooth) * inv / factor + smooth * inv;
      }
    }
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
  cos_host_ = std::move(c);
  sin_host_ = std::move(s);
}

void RotaryEmbedding::select_positions(const std::vector<int>& pos) {
  const int h = rot_ / 2, T = static_cast<int>(pos.size());
  std::vector<float> c(static_cast<size_t>(T) * h), s(c.size());
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < h; ++i) {
      c[static_cast<size_t>(t) * h + i] = cos_host_[static_cast<size_t>(pos[t]) * h + i];
      s[static_cast<size_t>(t) * h + i] = sin_host_[static_cast<size_t>(pos[t]) * h + i];
    }
  cos_ = Tensor({T, h}, dev_);
  sin_ = Tensor({T, h}, dev_);
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
