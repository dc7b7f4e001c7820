#include "models/gpt.h"

#include <cstring>
#include <stdexcept>

#include "kernels/ops.h"

namespace lossytp {

GPTModel::GPTModel(const ModelConfig& cfg, int tp_rank, int tp_size, TPOptions opt,
                   Compute compute)
    : cfg_(cfg),
      opt_(opt),
      store_(tp_rank, tp_size, compute),
      embed_(store_, cfg.vocab_size, cfg.hidden_size, cfg.init_std),
      pos_(store_.declare("pos.weight", {cfg.seq_length, cfg.hidden_size}, -1, Init::Normal,
                          cfg.init_std / 2, false)),
      lnf_(store_, "lnf", cfg.hidden_size),
      ce_(compute.device) {
  cfg.validate(tp_size);
  // Blocks are declared between the embeddings and the final LayerNorm in the arena; the
  // order only matters for checkpoints, which store parameters by name.
  for (int l = 0; l < cfg.num_layers; ++l)
    blocks_.push_back(std::make_unique<TransformerBlock>(store_, cfg, l, tp_size, opt));
  store_.allocate();
}

void GPTModel::ensure(int B, int T) {
  if (B == B_ && T == T_) return;
  if (T > cfg_.seq_length)
    throw std::invalid_argument("sequence of " + std::to_string(T) + " tokens is longer than --seq-length " +
                                std::to_string(cfg_.seq_length));
  B_ = B;
  T_ = T;
  const int64_t N = static_cast<int64_t>(B) * T, C = cfg_.hidden_size;
  const int tp = store_.tp_size();
  const Device dev = store_.device();
  res_.clear();
  for (int l = 0; l <= cfg_.num_layers; ++l) res_.emplace_back(std::vector<int64_t>{N, C}, dev);
  lnf_out_ = Tensor({N, C}, dev);
  logits_ = Tensor({N, embed_.vocab_local()}, dev);
  dres_ = Tensor({N, C}, dev);
  losses_ = Tensor({N}, dev);
  dloss_ = Tensor({N}, dev);
  if (dev != Device::CPU) tokens_ = Tensor({2 * N}, dev);
  scratch_.d_norm = Tensor({N, C}, dev);
  scratch_.d_att = Tensor({N, C / tp}, dev);
  scratch_.d_qkv = Tensor({N, 3 * C / tp}, dev);
  scratch_.d_fc = Tensor({N, cfg_.ffn() / tp}, dev);
  scratch_.gelu = Tensor({N, cfg_.ffn() / tp}, dev);
}

double GPTModel::step(const int32_t* x, const int32_t* y, int B, int T, Comm& tp, bool backward,
                      float grad_scale) {
  ensure(B, T);
  const int N = B * T, C = cfg_.hidden_size, L = cfg_.num_layers;
  const Device dev = store_.device();
  if (dev != Device::CPU) {  // one upload of the micro-batch's tokens (their bits, as floats)
    std::vector<float> host(2 * static_cast<size_t>(N));
    std::memcpy(host.data(), x, N * sizeof(int32_t));
    std::memcpy(host.data() + N, y, N * sizeof(int32_t));
    tokens_.copy_from_host(host.data());
    x = reinterpret_cast<const int32_t*>(tokens_.data());
    y = x + N;
  }
  // forward
  embed_.forward(res_[0].data(), x, N, tp);
  ops::position_forward(dev, res_[0].data(), store_.value(pos_), B, T, C);
  for (int l = 0; l < L; ++l)
    blocks_[l]->forward(res_[l + 1].data(), res_[l].data(), B, T, tp, scratch_);
  lnf_.forward(lnf_out_.data(), res_[L].data(), N);
  embed_.logits_forward(logits_.data(), lnf_out_.data(), N);
  ce_.forward(losses_.data(), logits_.data(), y, N, embed_.vocab_local(), embed_.vocab_start(), tp);
  const double loss_sum = ops::sum(dev, losses_.data(), N);
  if (!backward) return loss_sum;

  // backward
  ops::fill(dev, dloss_.data(), grad_scale, N);
  ce_.backward(logits_.data(), y, dloss_.data(), N, embed_.vocab_local(), embed_.vocab_start());
  embed_.logits_backward(scratch_.d_norm.data(), logits_.data(), lnf_out_.data(), N, tp, !opt_.caat);
  ops::fill(dev, dres_.data(), 0.0f, dres_.numel());
  lnf_.backward(dres_.data(), scratch_.d_norm.data(), res_[L].data(), N);
  for (int l = L - 1; l >= 0; --l)
    blocks_[l]->backward(dres_.data(), res_[l].data(), B, T, tp, scratch_);
  // Under CAAT the residual gradient is a per-rank partial sum: make it whole once here.
  if (opt_.caat) tp.all_reduce(dres_.data(), static_cast<size_t>(N) * C, "blocks.input.bwd");
  ops::position_backward(dev, store_.grad(pos_), dres_.data(), B, T, C);
  embed_.backward(dres_.data(), x, N);
  return loss_sum;
}

}  // namespace lossytp

namespace lossytp {

void GPTModel::reduce_partial_grads(Comm& tp) {
  if (!opt_.caat || tp.size() == 1) return;
  const Device dev = store_.device();
  auto partial = [&](const ParamSpec& s) { return s.shard_dim < 0 && s.name != "pos.weight"; };
  size_t n = 0;
  for (const ParamSpec& s : store_.specs())
    if (partial(s)) n += s.numel();
  if (partial_pack_.numel() != n) partial_pack_ = Tensor({static_cast<int64_t>(n)}, dev);
  size_t k = 0;
  for (const ParamSpec& s : store_.specs())
    if (partial(s)) {
      ops::copy(dev, partial_pack_.data() + k, store_.grads().data() + s.offset, s.numel());
      k += s.numel();
    }
  tp.all_reduce(partial_pack_.data(), n, "replicated.grad");
  k = 0;
  for (const ParamSpec& s : store_.specs())
    if (partial(s)) {
      ops::copy(dev, store_.grads().data() + s.offset, partial_pack_.data() + k, s.numel());
      k += s.numel();
    }
}

}  // namespace lossytp
