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
  // x: [B*T, C] input (kept by the caller until backward); writes out [B*T, C]. Under
  // --sequence-parallel both are this rank's B*T/tp rows, and so are the norms and adds.
  void forward(float* out, const float* x, int B, int T, Comm& tp, Workspace& ws);
  // dres: [N, C] gradient at the block output, replaced in place by the gradient at its input.
  void backward(float* dres, const float* x, int B, int T, Comm& tp, Workspace& ws);
  // For --dry-run (see BlockPart).
  size_t saved_floats(int N) const;
  size_t scratch_floats(int N) const;
  void comm_elements(int N, SiteElements& e) const;

  // Activation recompute (models/config.h RecomputeOptions). set_saved_pool(): under full
  // recompute the activations forward keeps for backward live in `pool`, shared with the blocks
  // at the same position of the other units (the norms' row statistics, N or 2N floats, stay
  // the block's own); the model runs the unit's forward again, replaying tape(), before its
  // backward. tape(): this block's collective results (sim/comm.h). set_recompute_core():
  // selective recompute.
  // with_norms: the norms' statistics live in `pool` too (pipeline parallelism: everything a
  // micro-batch in flight keeps is in its own pool).
  void set_saved_pool(Workspace* pool, bool with_norms = false);
  CollectiveTape& tape() { return tape_; }
  void set_recompute_core(bool on) { attn_->set_recompute_core(on); }
  void set_context_parallel(Comm* cp, const std::string& type) {
    attn_->set_context_parallel(cp, type);
    mlp_->set_context_parallel(nullptr, type);
  }
  // Floats the tape holds for N tokens on `tp` ranks (upper bound under --sequence-parallel).
  size_t tape_floats(int N, int tp) const;
  // The norms' row statistics (part of saved_floats; kept under full recompute).
  size_t norm_floats(int N) const {
    return static_cast<size_t>(N) * (norm1_.saved_per_token() + norm2_.saved_per_token());
  }

 private:
  void ensure(int N);
  int rows(int N) const { return opt_.rows(N, tp_); }  // residual rows here (sequence parallel: N/tp)
  Device dev_;
  int C_;
  TPOptions opt_;
  int tp_;
  Norm norm1_;
  std::unique_ptr<BlockPart> attn_;
  Norm norm2_;
  std::unique_ptr<BlockPart> mlp_;
  int N_ = 0;
  Tensor norm1_out_, x2_, norm2_out_;  // saved activations (rows(N) rows)
  CollectiveTape tape_;
  Workspace* pool_ = nullptr;
};

}  // namespace lossytp
