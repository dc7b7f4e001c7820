#include "models/transformer_block.h"

#include <cmath>

#include "kernels/ops.h"

namespace lossytp {

TransformerBlock::TransformerBlock(ParamStore& store, const ModelConfig& cfg, int layer,
                                   int tp_size, TPOptions opt)
    : dev_(store.device()),
      bf16_(store.compute().bf16),
      C_(cfg.hidden_size),
      NH_local_(cfg.num_attention_heads / tp_size),
      HD_(cfg.head_dim()),
      F_local_(cfg.ffn() / tp_size),
      ln1_(store, "layer" + std::to_string(layer) + ".ln1", cfg.hidden_size),
      ln2_(store, "layer" + std::to_string(layer) + ".ln2", cfg.hidden_size),
      // QKV rows are ordered [head, (q,k,v), head_dim], so a contiguous split gives each rank
      // whole heads with their q, k and v.
      qkv_(store, "layer" + std::to_string(layer) + ".attn.qkv", cfg.hidden_size,
           3 * cfg.hidden_size, cfg.init_std, opt),
      fc1_(store, "layer" + std::to_string(layer) + ".mlp.fc1", cfg.hidden_size, cfg.ffn(),
           cfg.init_std, opt),
      // GPT-2 scales the residual projections by 1/sqrt(2 L).
      proj_(store, "layer" + std::to_string(layer) + ".attn.proj", cfg.hidden_size,
            cfg.hidden_size, cfg.init_std / std::sqrt(2.0f * cfg.num_layers), opt),
      fc2_(store, "layer" + std::to_string(layer) + ".mlp.fc2", cfg.ffn(), cfg.hidden_size,
           cfg.init_std / std::sqrt(2.0f * cfg.num_layers), opt) {}

void TransformerBlock::ensure(int N) {
  if (N == N_) return;
  N_ = N;
  const int64_t n = N, Cl = NH_local_ * HD_;
  ln1_out_ = Tensor({n, C_}, dev_);
  qkv_out_ = Tensor({n, 3 * Cl}, dev_);
  att_out_ = Tensor({n, Cl}, dev_);
  lse_ = Tensor({n * NH_local_}, dev_);
  x2_ = Tensor({n, C_}, dev_);
  ln2_out_ = Tensor({n, C_}, dev_);
  fc1_out_ = Tensor({n, F_local_}, dev_);
}

void TransformerBlock::forward(float* out, const float* x, int B, int T, Comm& tp,
                               BlockScratch& s) {
  const int N = B * T;
  ensure(N);
  const size_t NC = static_cast<size_t>(N) * C_;
  // attention
  ln1_.forward(ln1_out_.data(), x, N);
  qkv_.forward(qkv_out_.data(), ln1_out_.data(), N);
  if (bf16_)
    ops::attention_forward_bf16(dev_, att_out_.data(), lse_.data(), qkv_out_.data(), B, T, NH_local_, HD_);
  else
    ops::attention_forward(dev_, att_out_.data(), lse_.data(), qkv_out_.data(), B, T, NH_local_, HD_);
  proj_.forward(x2_.data(), att_out_.data(), N, tp);
  ops::add_inplace(dev_, x2_.data(), x, NC);
  // MLP (GELU output is written to scratch: it is recomputed in the backward)
  ln2_.forward(ln2_out_.data(), x2_.data(), N);
  fc1_.forward(fc1_out_.data(), ln2_out_.data(), N);
  ops::gelu_forward(dev_, s.gelu.data(), fc1_out_.data(), static_cast<size_t>(N) * F_local_);
  fc2_.forward(out, s.gelu.data(), N, tp);
  ops::add_inplace(dev_, out, x2_.data(), NC);
}

void TransformerBlock::backward(float* dres, const float* x, int B, int T, Comm& tp,
                                BlockScratch& s) {
  const int N = B * T;
  const size_t NF = static_cast<size_t>(N) * F_local_;
  // MLP: dres is the gradient at x3 = x2 + fc2(...)
  ops::gelu_forward(dev_, s.gelu.data(), fc1_out_.data(), NF);
  fc2_.backward(s.d_fc.data(), dres, s.gelu.data(), N, tp);
  ops::gelu_backward(dev_, s.d_fc.data(), fc1_out_.data(), s.d_fc.data(), NF);
  fc1_.backward(s.d_norm.data(), s.d_fc.data(), ln2_out_.data(), N, tp);
  ln2_.backward(dres, s.d_norm.data(), x2_.data(), N);  // dres is now d x2
  // attention
  proj_.backward(s.d_att.data(), dres, att_out_.data(), N, tp);
  if (bf16_)
    ops::attention_backward_bf16(dev_, s.d_qkv.data(), s.d_att.data(), qkv_out_.data(),
                                 att_out_.data(), lse_.data(), B, T, NH_local_, HD_);
  else
    ops::attention_backward(dev_, s.d_qkv.data(), s.d_att.data(), qkv_out_.data(), att_out_.data(),
                            lse_.data(), B, T, NH_local_, HD_);
  qkv_.backward(s.d_norm.data(), s.d_qkv.data(), ln1_out_.data(), N, tp);
  ln1_.backward(dres, s.d_norm.data(), x, N);  // dres is now d x
}

}  // namespace lossytp
