// Rotary position embedding (Su et al.; Megatron's and Hugging Face's rotate-half layout): the
// first rotary_dim channels of every q and k head are rotated by angles t * inv_freq[i],
// inv_freq[i] = base^(-2i / rotary_dim), in place on the fused QKV activation of the local
// heads (so each TP rank rotates only its own heads, with no communication). The backward
// rotates the q and k gradients back (the transpose). cos/sin tables are built once, for
// positions 0..seq_length-1, computed in fp32 as Hugging Face does.
#pragma once
#include <vector>

#include "models/config.h"
#include "sim/tensor.h"

namespace lossytp {

class RotaryEmbedding {
 public:
  RotaryEmbedding(const ModelConfig& cfg, Device dev);
  int rotary_dim() const { return rot_; }
  // qkv: [B, T, groups, heads/groups + 2, head_dim] (Megatron's grouped QKV of the local heads).
  void forward(float* qkv, int B, int T, int heads, int groups) const;
  void backward(float* dqkv, int B, int T, int heads, int groups) const;
  // Context parallelism: row t of a sequence is at global position pos[t] (the tables keep only
  // those rows, so forward/backward then take T = pos.size()).
  void select_positions(const std::vector<int>& pos);

 private:
  Device dev_;
  int hd_, rot_;
  Tensor cos_, sin_;  // [seq_length, rotary_dim / 2]: row t for position t (or pos[t])
  std::vector<float> cos_host_, sin_host_;  // every position's, for select_positions
};

}  // namespace lossytp
