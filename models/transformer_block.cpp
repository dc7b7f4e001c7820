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
      opt_(opt),
      tp_(store.tp_size()),
      norm1_(store, "layer" + std::to_string(layer) + ".ln1", cfg.hidden_size, cfg.normalization,
             cfg.norm_epsilon),
      attn_(attention_factory(cfg.attention_of(layer))(context(store, cfg, layer, opt, rotary, "attn"))),
      norm2_(store, "layer" + std::to_string(layer) + ".ln2", cfg.hidden_size, cfg.normalization,
             cfg.norm_epsilon),
      mlp_(mlp_factory(cfg.mlp())(context(store, cfg, layer, opt, rotary, "mlp"))) {}

void TransformerBlock::ensure(int N) {
  if (N == N_) return;
  N_ = N;
  auto saved = [&](const char* name) {
    return pool_ ? pool_->tensor(name, {rows(N), C_}) : Tensor({rows(N), C_}, dev_);
  };
  norm1_out_ = saved("block.norm1");
  x2_ = saved("block.x2");
  norm2_out_ = saved("block.norm2");
}

void TransformerBlock::forward(float* out, const float* x, int B, int T, Comm& tp, Workspace& ws) {
  const int N = B * T, R = rows(N);
  ensure(N);
  const size_t NC = static_cast<size_t>(R) * C_;
  norm1_.forward(norm1_out_.data(), x, R);
  attn_->forward(x2_.data(), norm1_out_.data(), B, T, tp, ws);
  ops::add_inplace(dev_, x2_.data(), x, NC);
  norm2_.forward(norm2_out_.data(), x2_.data(), R);
  mlp_->forward(out, norm2_out_.data(), B, T, tp, ws);
  ops::add_inplace(dev_, out, x2_.data(), NC);
}

void TransformerBlock::backward(float* dres, const float* x, int B, int T, Comm& tp, Workspace& ws) {
  const int R = rows(B * T);
  ensure(B * T);  // the saved tensors of the pool in use (pipeline: this micro-batch's)
  float* d_norm = ws.get("block.d_norm", static_cast<size_t>(R) * C_);
  mlp_->backward(d_norm, dres, norm2_out_.data(), B, T, tp, ws);
  norm2_.backward(dres, d_norm, x2_.data(), R);  // dres is now d x2 (residual + norm path)
  attn_->backward(d_norm, dres, norm1_out_.data(), B, T, tp, ws);
  norm1_.backward(dres, d_norm, x, R);  // dres is now d x
}

size_t TransformerBlock::saved_floats(int N) const {
  return 3 * static_cast<size_t>(rows(N)) * C_ +
         static_cast<size_t>(rows(N)) * (norm1_.saved_per_token() + norm2_.saved_per_token()) +
         attn_->saved_floats(N) + mlp_->saved_floats(N);
}

size_t TransformerBlock::scratch_floats(int N) const {
  return static_cast<size_t>(rows(N)) * C_ + attn_->scratch_floats(N) + mlp_->scratch_floats(N);
}

void TransformerBlock::comm_elements(int N, SiteElements& e) const {
  attn_->comm_elements(N, e);
  mlp_->comm_elements(N, e);
}

void TransformerBlock::set_saved_pool(Workspace* pool, bool with_norms) {
  pool_ = pool;
  norm1_.set_saved_pool(with_norms ? pool : nullptr);
  norm2_.set_saved_pool(with_norms ? pool : nullptr);
  norm1_out_ = x2_ = norm2_out_ = Tensor();
  N_ = 0;
  attn_->set_saved_pool(pool);
  mlp_->set_saved_pool(pool);
}

size_t TransformerBlock::tape_floats(int N, int tp) const {
  if (tp == 1) return 0;  // one rank's collectives are local: nothing stored
  SiteElements e;
  comm_elements(N, e);
  auto forward = [](const std::string& site) {
    return site.size() > 4 && site.compare(site.size() - 4, 4, ".fwd") == 0;
  };
  double n = 0;
  for (const auto& [site, k] : e.all_reduce)
    if (forward(site)) n += k;
  for (const auto& [site, k] : e.gathered)  // all-gathered: the full tensor (reduce-scattered: 1/tp)
    if (forward(site)) n += k;
  return static_cast<size_t>(n);
}

}  // namespace lossytp
