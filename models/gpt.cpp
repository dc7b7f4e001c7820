#include "models/gpt.h"

#include <cstring>
#include <stdexcept>

#include "kernels/ops.h"

namespace lossytp {

namespace {
const ModelConfig& checked(const ModelConfig& cfg, int tp) {
  cfg.validate(tp);
  attention_factory(cfg.attention);  // throws listing the known ones
  return cfg;
}

// Declared between the embeddings and the final norm in the arena (checkpoints store
// parameters by name, so only the arena's order depends on this).
std::vector<std::unique_ptr<TransformerBlock>> make_blocks(ParamStore& store, const ModelConfig& cfg,
                                                           TPOptions opt, const RotaryEmbedding* rotary) {
  std::vector<std::unique_ptr<TransformerBlock>> v;
  for (int l = 0; l < cfg.num_layers; ++l)
    v.push_back(std::make_unique<TransformerBlock>(store, cfg, l, opt, rotary));
  return v;
}
}  // namespace

GPTModel::GPTModel(const ModelConfig& cfg, int tp_rank, int tp_size, TPOptions opt,
                   Compute compute, bool allocate)
    : cfg_(checked(cfg, tp_size)),
      opt_(opt),
      store_(tp_rank, tp_size, compute),
      embed_(store_, cfg.padded_vocab_size(tp_size), cfg.hidden_size, cfg.init_std),
      pos_(cfg.rope() ? -1
                      : store_.declare("pos.weight", {cfg.seq_length, cfg.hidden_size}, -1,
                                       Init::Normal, cfg.init_std / 2, false)),
      rotary_(cfg.rope() ? std::make_unique<RotaryEmbedding>(cfg, compute.device) : nullptr),
      blocks_(make_blocks(store_, cfg_, opt, rotary_.get())),
      final_norm_(store_, "lnf", cfg.hidden_size, cfg.normalization, cfg.norm_epsilon),
      output_(store_, cfg_, cfg.untie_embeddings_and_output_weights ? -1 : embed_.weight_index()),
      ce_(compute.device),
      ws_(compute.device) {
  if (allocate) store_.allocate();
  else store_.plan();
}

void GPTModel::ensure(int B, int T) {
  if (B == B_ && T == T_) return;
  if (T > cfg_.seq_length)
    throw std::invalid_argument("sequence of " + std::to_string(T) + " tokens is longer than --seq-length " +
                                std::to_string(cfg_.seq_length));
  B_ = B;
  T_ = T;
  const int64_t N = static_cast<int64_t>(B) * T, C = cfg_.hidden_size;
  const Device dev = store_.device();
  res_.clear();
  for (int l = 0; l <= cfg_.num_layers; ++l) res_.emplace_back(std::vector<int64_t>{N, C}, dev);
  final_out_ = Tensor({N, C}, dev);
  logits_ = Tensor({N, output_.vocab_local()}, dev);
  dres_ = Tensor({N, C}, dev);
  losses_ = Tensor({N}, dev);
  dloss_ = Tensor({N}, dev);
  if (dev != Device::CPU) tokens_ = Tensor({2 * N}, dev);
}

double GPTModel::step(const int32_t* x, const int32_t* y, int B, int T, Comm& tp, bool backward,
                      float grad_scale, float* token_losses) {
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
  if (pos_ >= 0) ops::position_forward(dev, res_[0].data(), store_.value(pos_), B, T, C);
  for (int l = 0; l < L; ++l) blocks_[l]->forward(res_[l + 1].data(), res_[l].data(), B, T, tp, ws_);
  final_norm_.forward(final_out_.data(), res_[L].data(), N);
  output_.forward(logits_.data(), final_out_.data(), N);
  ce_.forward(losses_.data(), logits_.data(), y, N, output_.vocab_local(), output_.vocab_start(), tp);
  const double loss_sum = ops::sum(dev, losses_.data(), N);
  if (token_losses) {
    if (dev == Device::CPU) std::memcpy(token_losses, losses_.data(), N * sizeof(float));
    else losses_.copy_to_host(token_losses);
  }
  if (!backward) return loss_sum;

  // backward
  float* d_norm = ws_.get("block.d_norm", static_cast<size_t>(N) * C);
  ops::fill(dev, dloss_.data(), grad_scale, N);
  ce_.backward(logits_.data(), y, dloss_.data(), N, output_.vocab_local(), output_.vocab_start());
  output_.backward(d_norm, logits_.data(), final_out_.data(), N, tp, !opt_.caat);
  ops::fill(dev, dres_.data(), 0.0f, dres_.numel());
  final_norm_.backward(dres_.data(), d_norm, res_[L].data(), N);
  for (int l = L - 1; l >= 0; --l) blocks_[l]->backward(dres_.data(), res_[l].data(), B, T, tp, ws_);
  // Under CAAT the residual gradient is a per-rank partial sum: make it whole once here.
  if (opt_.caat) tp.all_reduce(dres_.data(), static_cast<size_t>(N) * C, "blocks.input.bwd");
  if (pos_ >= 0) ops::position_backward(dev, store_.grad(pos_), dres_.data(), B, T, C);
  embed_.backward(dres_.data(), x, N);
  return loss_sum;
}

bool GPTModel::partial_grad(const ParamSpec& s) const {
  // Replicated parameters whose gradient each rank computes from its partial residual gradient
  // under CAAT; learned positions see the reduced one (after "blocks.input.bwd").
  return s.shard_dim < 0 && s.name != "pos.weight";
}

void GPTModel::reduce_partial_grads(Comm& tp) {
  if (!opt_.caat || tp.size() == 1) return;
  const Device dev = store_.device();
  size_t n = 0;
  for (const ParamSpec& s : store_.specs())
    if (partial_grad(s)) n += s.numel();
  if (partial_pack_.numel() != n) partial_pack_ = Tensor({static_cast<int64_t>(n)}, dev);
  size_t k = 0;
  for (const ParamSpec& s : store_.specs())
    if (partial_grad(s)) {
      ops::copy(dev, partial_pack_.data() + k, store_.grads().data() + s.offset, s.numel());
      k += s.numel();
    }
  tp.all_reduce(partial_pack_.data(), n, "replicated.grad");
  k = 0;
  for (const ParamSpec& s : store_.specs())
    if (partial_grad(s)) {
      ops::copy(dev, store_.grads().data() + s.offset, partial_pack_.data() + k, s.numel());
      k += s.numel();
    }
}

MemoryEstimate GPTModel::memory_estimate(int B, int T) const {
  const double f = sizeof(float), P = static_cast<double>(store_.numel());
  const double N = static_cast<double>(B) * T, C = cfg_.hidden_size, L = cfg_.num_layers;
  MemoryEstimate m;
  m.weights = P * f;
  m.grads = P * f;
  m.optimizer = 2 * P * f;
  // residual stream (L + 1), final norm output, residual gradient, logits (the exponentials
  // overwrite them), per-token losses and CE statistics, every block's saved activations and
  // the shared temporaries.
  double a = (L + 3) * N * C + N * output_.vocab_local() + 6 * N;
  for (const auto& b : blocks_) a += static_cast<double>(b->saved_floats(static_cast<int>(N)));
  if (!blocks_.empty()) a += static_cast<double>(blocks_[0]->scratch_floats(static_cast<int>(N)));
  m.activations = a * f;
  return m;
}

SiteElements GPTModel::comm_elements(int B, int T) const {
  const int N = B * T;
  const double NC = static_cast<double>(N) * cfg_.hidden_size;
  SiteElements e;
  e["embed.fwd"] += NC;
  for (const auto& b : blocks_) b->comm_elements(N, e);
  output_.comm_elements(N, !opt_.caat, e);
  e["ce.max"] += N;
  e["ce.target"] += N;
  e["ce.sumexp"] += N;
  if (opt_.caat) {
    e["blocks.input.bwd"] += NC;
    size_t n = 0;
    for (const ParamSpec& s : store_.specs())
      if (partial_grad(s)) n += s.numel();
    e["replicated.grad"] += static_cast<double>(n);  // once per iteration, not per micro-batch
  }
  return e;
}

}  // namespace lossytp
