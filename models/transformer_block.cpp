#include "models/transformer_block.h"

#include "kernels/ops.h"

namespace lossytp {

namespace {
PartContext context(ParamStore& store, const ModelConfig& cfg, int layer, TPOptions opt,
                    const RotaryEmbedding* rotary, const char* part) {
  return PartContext{store, cfg, opt, layer, "layer" + std::to_string(layer) + "." + part, rotary};
}
}  // namespace

TransformerBlock::TransformerBlock(ParamStore& store, const ModelConfig& cfg, int layer,
                                   TPOptions opt, const RotaryEmbedding* rotary)
    : dev_(store.device()),
      C_(cfg.hidden_size),
      norm1_(store, "layer" + std::to_string(layer) + ".ln1", cfg.hidden_size, cfg.normalization,
             cfg.norm_epsilon),
      attn_(attention_factory(cfg.attention)(context(store, cfg, layer, opt, rotary, "attn"))),
      norm2_(store, "layer" + std::to_string(layer) + ".ln2", cfg.hidden_size, cfg.normalization,
             cfg.norm_epsilon),
      mlp_(mlp_factory(cfg.mlp())(context(store, cfg, layer, opt, rotary, "mlp"))) {}

void TransformerBlock::ensure(int N) {
  if (N == N_) return;
  N_ = N;
  norm1_out_ = Tensor({N, C_}, dev_);
  x2_ = Tensor({N, C_}, dev_);
  norm2_out_ = Tensor({N, C_}, dev_);
}

void TransformerBlock::forward(float* out, const float* x, int B, int T, Comm& tp, Workspace& ws) {
  const int N = B * T;
  ensure(N);
  const size_t NC = static_cast<size_t>(N) * C_;
  norm1_.forward(norm1_out_.data(), x, N);
  attn_->forward(x2_.data(), norm1_out_.data(), B, T, tp, ws);
  ops::add_inplace(dev_, x2_.data(), x, NC);
  norm2_.forward(norm2_out_.data(), x2_.data(), N);
  mlp_->forward(out, norm2_out_.data(), B, T, tp, ws);
  ops::add_inplace(dev_, out, x2_.data(), NC);
}

void TransformerBlock::backward(float* dres, const float* x, int B, int T, Comm& tp, Workspace& ws) {
  const int N = B * T;
  float* d_norm = ws.get("block.d_norm", static_cast<size_t>(N) * C_);
  mlp_->backward(d_norm, dres, norm2_out_.data(), B, T, tp, ws);
  norm2_.backward(dres, d_norm, x2_.data(), N);  // dres is now d x2 (residual + norm path)
  attn_->backward(d_norm, dres, norm1_out_.data(), B, T, tp, ws);
  norm1_.backward(dres, d_norm, x, N);  // dres is now d x
}

size_t TransformerBlock::saved_floats(int N) const {
  return 3 * static_cast<size_t>(N) * C_ +
         static_cast<size_t>(N) * (norm1_.saved_per_token() + norm2_.saved_per_token()) +
         attn_->saved_floats(N) + mlp_->saved_floats(N);
}

size_t TransformerBlock::scratch_floats(int N) const {
  return static_cast<size_t>(N) * C_ + attn_->scratch_floats(N) + mlp_->scratch_floats(N);
}

void TransformerBlock::comm_elements(int N, SiteElements& e) const {
  attn_->comm_elements(N, e);
  mlp_->comm_elements(N, e);
}

}  // namespace lossytp
