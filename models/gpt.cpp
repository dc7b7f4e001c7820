#include "models/gpt.h"

#include <stdexcept>

#include "kernels/cpu/ops.h"

namespace lossytp {

GPTModel::GPTModel(const ModelConfig& cfg, int tp_rank, int tp_size, TPOptions opt)
    : cfg_(cfg),
      opt_(opt),
      store_(tp_rank, tp_size),
      embed_(store_, cfg.vocab_size, cfg.hidden_size, cfg.init_std),
      pos_(store_.declare("pos.weight", {cfg.seq_length, cfg.hidden_size}, -1, Init::Normal,
                          cfg.init_std / 2, false)),
      lnf_(store_, "lnf", cfg.hidden_size) {
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
  res_.clear();
  for (int l = 0; l <= cfg_.num_layers; ++l) res_.emplace_back(std::vector<int64_t>{N, C});
  lnf_out_ = Tensor({N, C});
  logits_ = Tensor({N, embed_.vocab_local()});
  dres_ = Tensor({N, C});
  losses_ = Tensor({N});
  dloss_ = Tensor({N});
  scratch_.d_norm = Tensor({N, C});
  scratch_.d_att = Tensor({N, C / tp});
  scratch_.d_qkv = Tensor({N, 3 * C / tp});
  scratch_.d_fc = Tensor({N, cfg_.ffn() / tp});
  scratch_.gelu = Tensor({N, cfg_.ffn() / tp});
}

double GPTModel::step(const int32_t* x, const int32_t* y, int B, int T, Comm& tp, bool backward,
                      float grad_scale) {
  ensure(B, T);
  const int N = B * T, C = cfg_.hidden_size, L = cfg_.num_layers;
  // forward
  embed_.forward(res_[0].data(), x, N, tp);
  cpu::position_forward(res_[0].data(), store_.value(pos_), B, T, C);
  for (int l = 0; l < L; ++l)
    blocks_[l]->forward(res_[l + 1].data(), res_[l].data(), B, T, tp, scratch_);
  lnf_.forward(lnf_out_.data(), res_[L].data(), N);
  embed_.logits_forward(logits_.data(), lnf_out_.data(), N);
  ce_.forward(losses_.data(), logits_.data(), y, N, embed_.vocab_local(), embed_.vocab_start(), tp);
  double loss_sum = 0.0;
  const float* ls = losses_.data();
  for (int n = 0; n < N; ++n) loss_sum += ls[n];
  if (!backward) return loss_sum;

  // backward
  dloss_.fill(grad_scale);
  ce_.backward(logits_.data(), y, dloss_.data(), N, embed_.vocab_local(), embed_.vocab_start());
  embed_.logits_backward(scratch_.d_norm.data(), logits_.data(), lnf_out_.data(), N, tp, !opt_.caat);
  dres_.zero();
  lnf_.backward(dres_.data(), scratch_.d_norm.data(), res_[L].data(), N);
  for (int l = L - 1; l >= 0; --l)
    blocks_[l]->backward(dres_.data(), res_[l].data(), B, T, tp, scratch_);
  // Under CAAT the residual gradient is a per-rank partial sum: make it whole once here.
  if (opt_.caat) tp.all_reduce(dres_.data(), static_cast<size_t>(N) * C, "blocks.input.bwd");
  cpu::position_backward(store_.grad(pos_), dres_.data(), B, T, C);
  embed_.backward(dres_.data(), x, N);
  return loss_sum;
}

}  // namespace lossytp

namespace lossytp {

void GPTModel::reduce_partial_grads(Comm& tp) {
  if (!opt_.caat || tp.size() == 1) return;
  partial_pack_.clear();
  auto partial = [&](const ParamSpec& s) { return s.shard_dim < 0 && s.name != "pos.weight"; };
  for (const ParamSpec& s : store_.specs())
    if (partial(s)) {
      const float* g = store_.grads().data() + s.offset;
      partial_pack_.insert(partial_pack_.end(), g, g + s.numel());
    }
  tp.all_reduce(partial_pack_.data(), partial_pack_.size(), "replicated.grad");
  size_t k = 0;
  for (const ParamSpec& s : store_.specs())
    if (partial(s)) {
      float* g = store_.grads().data() + s.offset;
      for (size_t i = 0; i < s.numel(); ++i) g[i] = partial_pack_[k++];
    }
}

}  // namespace lossytp
