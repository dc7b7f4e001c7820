#include "models/gpt.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "kernels/ops.h"
#include "models/mappings.h"

namespace lossytp {

namespace {
const ModelConfig& checked(const ModelConfig& cfg, int tp) {
  cfg.validate(tp);
  attention_factory(cfg.attention);  // throws listing the known ones
  for (const std::string& a : cfg.attention_pattern) attention_factory(a);
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
      output_(store_, cfg_, cfg.untie_embeddings_and_output_weights ? -1 : embed_.weight_index(), opt),
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
  if (opt_.sequence_parallel && (B * T) % store_.tp_size() != 0)
    throw std::invalid_argument("--sequence-parallel splits the " + std::to_string(B * T) +
                                " tokens of a micro-batch (" + std::to_string(B) + " x " + std::to_string(T) +
                                ") over " + std::to_string(store_.tp_size()) +
                                " TP ranks: they must divide evenly");
  B_ = B;
  T_ = T;
  const int64_t N = static_cast<int64_t>(B) * T, C = cfg_.hidden_size;
  const int64_t R = opt_.rows(static_cast<int>(N), store_.tp_size());  // residual-stream rows here
  const Device dev = store_.device();
  res_.clear();
  inner_.clear();
  for (int l = 0; l <= cfg_.num_layers; ++l) {
    // Full uniform recompute: the inputs of a unit's later blocks are recomputed in backward,
    // so all units share the same (num_layers - 1) buffers for them.
    const int b = recompute_.unit_begin(l, cfg_.num_layers), slot = l - b - 1;
    if (b >= 0 && slot >= 0 && slot < static_cast<int>(inner_.size())) {
      res_.push_back(inner_[slot]);
      continue;
    }
    res_.emplace_back(std::vector<int64_t>{R, C}, dev);
    if (b >= 0 && slot >= 0) inner_.push_back(res_.back());
  }
  final_out_ = Tensor({R, C}, dev);
  logits_ = Tensor({N, output_.vocab_local()}, dev);
  dres_ = Tensor({R, C}, dev);
  losses_ = Tensor({N}, dev);
  dloss_ = Tensor({N}, dev);
  if (dev != Device::CPU) tokens_ = Tensor({2 * N}, dev);
}

double GPTModel::step(const int32_t* x, const int32_t* y, int B, int T, Comm& tp, bool backward,
                      float grad_scale, float* token_losses) {
  ensure(B, T);
  const int N = B * T, C = cfg_.hidden_size, L = cfg_.num_layers;
  const int R = opt_.rows(N, tp.size());  // residual-stream rows on this rank (sequence parallel: N/tp)
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
  if (!opt_.sequence_parallel) {
    embed_.forward(res_[0].data(), x, N, tp);
    if (pos_ >= 0) ops::position_forward(dev, res_[0].data(), store_.value(pos_), B, T, C);
  } else if (pos_ >= 0) {  // Megatron: positions join the whole embedding, then each rank keeps its rows
    float* full = ws_.get("sp.full", static_cast<size_t>(N) * C);
    embed_.forward(full, x, N, tp);
    ops::position_forward(dev, full, store_.value(pos_), B, T, C);
    scatter_to_sp_region(dev, full, res_[0].data(), N, C, tp.rank(), tp.size());
  } else {
    embed_.forward_scattered(res_[0].data(), x, N, tp, ws_);
  }
  for (int l = 0; l < L; ++l) forward_block(l, B, T, tp, backward);
  final_norm_.forward(final_out_.data(), res_[L].data(), R);
  output_.forward(logits_.data(), final_out_.data(), N, tp, ws_);
  ce_.forward(losses_.data(), logits_.data(), y, N, output_.vocab_local(), output_.vocab_start(), tp);
  const double loss_sum = ops::sum(dev, losses_.data(), N);
  if (token_losses) {
    if (dev == Device::CPU) std::memcpy(token_losses, losses_.data(), N * sizeof(float));
    else losses_.copy_to_host(token_losses);
  }
  if (!backward) return loss_sum;

  // backward
  float* d_norm = ws_.get("block.d_norm", static_cast<size_t>(R) * C);
  ops::fill(dev, dloss_.data(), grad_scale, N);
  ce_.backward(logits_.data(), y, dloss_.data(), N, output_.vocab_local(), output_.vocab_start());
  output_.backward(d_norm, logits_.data(), final_out_.data(), N, tp, !opt_.caat, ws_);
  ops::fill(dev, dres_.data(), 0.0f, dres_.numel());
  final_norm_.backward(dres_.data(), d_norm, res_[L].data(), R);
  for (int l = L - 1; l >= 0; --l) {
    // Full recompute: at the last block of a unit, the unit's forward runs again from its saved
    // input, replaying each block's collective results (no communication, no counters).
    const int b = recompute_.unit_begin(l, L);
    if (b >= 0 && recompute_.unit_begin(l + 1, L) != b)
      for (int k = b; k <= l; ++k) {
        tp.replay(blocks_[k]->tape());
        try {
          blocks_[k]->forward(res_[k + 1].data(), res_[k].data(), B, T, tp, ws_);
        } catch (...) {
          try { tp.stop_tape(); } catch (...) {}
          throw;
        }
        tp.stop_tape();  // throws std::logic_error when the replay used fewer calls than recorded
      }
    blocks_[l]->backward(dres_.data(), res_[l].data(), B, T, tp, ws_);
  }
  // Under CAAT the residual gradient is a per-rank partial sum: make it whole once here.
  if (opt_.caat) tp.all_reduce(dres_.data(), static_cast<size_t>(N) * C, "blocks.input.bwd");
  const float* d_embed = dres_.data();
  if (opt_.sequence_parallel) {  // the backward of the scatter: every row's gradient on every rank
    float* full = ws_.get("sp.full", static_cast<size_t>(N) * C);
    gather_from_sp_region(tp, dres_.data(), full, N, C, "embed.bwd");
    d_embed = full;
  }
  if (pos_ >= 0) ops::position_backward(dev, store_.grad(pos_), d_embed, B, T, C);
  embed_.backward(d_embed, x, N);
  return loss_sum;
}

void GPTModel::set_recompute(const RecomputeOptions& r) {
  r.validate(cfg_.num_layers);
  recompute_ = r;
  pools_.clear();
  for (int l = 0; l < cfg_.num_layers; ++l) {
    blocks_[l]->set_recompute_core(r.selective());
    const int u = r.unit_begin(l, cfg_.num_layers);
    if (u >= 0 && l - u >= static_cast<int>(pools_.size()))
      pools_.push_back(std::make_unique<Workspace>(store_.device()));
    blocks_[l]->set_saved_pool(u >= 0 ? pools_[l - u].get() : nullptr);
  }
  B_ = T_ = 0;  // the residual stream's buffers change
}

void GPTModel::forward_block(int l, int B, int T, Comm& tp, bool record) {
  const bool recomputed = recompute_.unit_begin(l, cfg_.num_layers) >= 0;
  float* out = res_[l + 1].data();
  const float* in = res_[l].data();
  if (!recomputed || !record) return blocks_[l]->forward(out, in, B, T, tp, ws_);
  tp.record(blocks_[l]->tape());
  try {
    blocks_[l]->forward(out, in, B, T, tp, ws_);
  } catch (...) {
    tp.stop_tape();  // recording: never throws
    throw;
  }
  tp.stop_tape();
}

bool GPTModel::partial_grad(const ParamSpec& s) const {
  // Replicated parameters whose gradient each rank computes from its partial residual gradient
  // under CAAT, or from its own token rows under sequence parallelism (norms, row-parallel
  // biases); learned positions see the reduced one (after "blocks.input.bwd"), or under
  // sequence parallelism the all-gathered one (after "embed.bwd").
  // Parameters named "*.shared.*" (semigroup attention's scalars) are all-reduced over TP by
  // their part in every backward, in every mode.
  return s.shard_dim < 0 && s.name != "pos.weight" && s.name.find(".shared.") == std::string::npos;
}

void GPTModel::reduce_partial_grads(Comm& tp) {
  if (!(opt_.caat || opt_.sequence_parallel) || tp.size() == 1) return;
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
  // the shared temporaries. Sequence parallel: the residual stream has N/tp rows here, and two
  // full [N, C] temporaries hold what is gathered ("sp.full", "sp.full_dx").
  const double R = opt_.rows(static_cast<int>(N), store_.tp_size());
  double a = (L + 3) * R * C + N * output_.vocab_local() + 6 * N;
  if (opt_.sequence_parallel) a += 2 * N * C;
  // Full recompute: a recomputed block keeps its collective tape and its norms' statistics
  // instead of its saved activations, which exist again for one unit at a time in backward;
  // the inputs of a unit's later blocks share (units' size - 1) buffers.
  const int n = static_cast<int>(N), tp = store_.tp_size();
  double unit = 0, largest_unit = 0;
  int shared_inputs = 0;
  for (int l = 0; l < cfg_.num_layers; ++l) {
    const TransformerBlock& b = *blocks_[l];
    const int u = recompute_.unit_begin(l, cfg_.num_layers);
    if (u < 0) {
      a += static_cast<double>(b.saved_floats(n));
      continue;
    }
    a += static_cast<double>(b.tape_floats(n, tp) + b.norm_floats(n));
    unit = (u == l ? 0 : unit) + static_cast<double>(b.saved_floats(n) - b.norm_floats(n));
    largest_unit = std::max(largest_unit, unit);
    if (l > u) a -= R * C, shared_inputs = std::max(shared_inputs, l - u);
  }
  a += largest_unit + shared_inputs * R * C;
  if (!blocks_.empty()) a += static_cast<double>(blocks_[0]->scratch_floats(static_cast<int>(N)));
  m.activations = a * f;
  return m;
}

SiteElements GPTModel::comm_elements(int B, int T) const {
  const int N = B * T;
  const double NC = static_cast<double>(N) * cfg_.hidden_size;
  SiteElements e;
  if (!opt_.sequence_parallel) {
    e["embed.fwd"] += NC;
  } else {
    // learned positions: all-reduce, add, keep the rows (no traffic); else a reduce-scatter
    if (pos_ >= 0) e["embed.fwd"] += NC;
    else e.gathered["embed.fwd"] += NC;
    e.gathered["embed.bwd"] += NC;
  }
  for (const auto& b : blocks_) b->comm_elements(N, e);
  output_.comm_elements(N, !opt_.caat, e);
  e["ce.max"] += N;
  e["ce.target"] += N;
  e["ce.sumexp"] += N;
  if (opt_.caat) e["blocks.input.bwd"] += NC;
  if (opt_.caat || opt_.sequence_parallel) {
    size_t n = 0;
    for (const ParamSpec& s : store_.specs())
      if (partial_grad(s)) n += s.numel();
    e["replicated.grad"] += static_cast<double>(n);  // once per iteration, not per micro-batch
  }
  return e;
}

}  // namespace lossytp
