// One pre-norm transformer block assembled from its layer spec (models/layer_spec.h):
//   x2 = x  + attention(norm1(x))
//   x3 = x2 + mlp(norm2(x2))
// GPT-2: LayerNorm, softmax MHA, GELU MLP, biases. Llama: RMSNorm, softmax GQA with RoPE,
// SwiGLU MLP, no biases. Communication is the parts' (Megatron's: two all-reduces forward, two
// backward per block).
#pragma once
#include <memory>

#include "models/layer_spec.h"
#include "models/norm.h"

namespace lossytp {

class TransformerBlock {
 public:
  TransformerBlock(ParamStore& store, const ModelConfig& cfg, int layer, TPOptions opt,
                   const RotaryEmbedding* rotary);
  // x: [B*T, C] input (kept by the caller until backward); writes out [B*T, C].
  void forward(float* out, const float* x, int B, int T, Comm& tp, Workspace& ws);
  // dres: [N, C] gradient at the block output, replaced in place by the gradient at its input.
  void backward(float* dres, const float* x, int B, int T, Comm& tp, Workspace& ws);
  // For --dry-run (see BlockPart).
  size_t saved_floats(int N) const;
  size_t scratch_floats(int N) const;
  void comm_elements(int N, SiteElements& e) const;

 private:
  void ensure(int N);
  Device dev_;
  int C_;
  Norm norm1_;
  std::unique_ptr<BlockPart> attn_;
  Norm norm2_;
  std::unique_ptr<BlockPart> mlp_;
  int N_ = 0;
  Tensor norm1_out_, x2_, norm2_out_;  // saved activations
};

}  // namespace lossytp
