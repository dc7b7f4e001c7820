#include "models/gpt.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "kernels/ops.h"
#include "models/context_parallel.h"
#include "models/mappings.h"

namespace lossytp {

namespace {
const ModelConfig& checked(const ModelConfig& cfg, int tp, const PipelineStage& pipe) {
  cfg.validate(tp);
  pipe.validate(cfg.num_layers);
  attention_factory(cfg.attention);  // throws listing the known ones
  for (const std::string& a : cfg.attention_pattern) attention_factory(a);
  return cfg;
}

// Declared between the embeddings and the final norm in the arena (checkpoints store
// parameters by name, so only the arena's order depends on this). Layers of other pipeline
// stages stay null.
std::vector<std::unique_ptr<TransformerBlock>> make_blocks(ParamStore& store, const ModelConfig& cfg,
                                                           TPOptions opt, const RotaryEmbedding* rotary,
                                                           const PipelineStage& pipe) {
  std::vector<std::unique_ptr<TransformerBlock>> v(cfg.num_layers);
  for (int l = 0; l < cfg.num_layers; ++l)
    if (pipe.holds(l, cfg.num_layers)) v[l] = std::make_unique<TransformerBlock>(store, cfg, l, opt, rotary);
  return v;
}
}  // namespace

GPTModel::GPTModel(const ModelConfig& cfg, int tp_rank, int tp_size, TPOptions opt,
                   Compute compute, bool allocate, PipelineStage pipe)
    : cfg_(checked(cfg, tp_size, pipe)),
      opt_(opt),
      pipe_(pipe),
      store_(tp_rank, tp_size, compute),
      rotary_(cfg.rope() ? std::make_unique<RotaryEmbedding>(cfg, compute.device) : nullptr),
      ce_(compute.device),
      ws_(compute.device) {
  const bool tied = !cfg.untie_embeddings_and_output_weights;
  if (pipe_.first() || (pipe_.last() && tied)) {
    embed_.emplace(store_, cfg.padded_vocab_size(tp_size), cfg.hidden_size, cfg.init_std);
    if (!pipe_.first()) store_.mark_pipeline_copy(embed_->weight_index());
  }
  if (pipe_.first() && !cfg.rope())
    pos_ = store_.declare("pos.weight", {cfg.seq_length, cfg.hidden_size}, -1, Init::Normal, cfg.init_std / 2, false);
  blocks_ = make_blocks(store_, cfg_, opt, rotary_.get(), pipe_);
  if (pipe_.last()) {
    final_norm_.emplace(store_, "lnf", cfg.hidden_size, cfg.normalization, cfg.norm_epsilon);
    output_.emplace(store_, cfg_, tied ? embed_->weight_index() : -1, opt);
  }
  if (allocate) store_.allocate();
  else store_.plan();
}

void GPTModel::check_shape(int B, int T) const {
  if (T > cfg_.seq_length)
    throw std::invalid_argument("sequence of " + std::to_string(T) + " tokens is longer than --seq-length " +
                                std::to_string(cfg_.seq_length));
  if (opt_.sequence_parallel && (B * T) % store_.tp_size() != 0)
    throw std::invalid_argument("--sequence-parallel splits the " + std::to_string(B * T) +
                                " tokens of a micro-batch (" + std::to_string(B) + " x " + std::to_string(T) +
                                ") over " + std::to_string(store_.tp_size()) +
                                " TP ranks: they must divide evenly");
}

void GPTModel::ensure(int B, int T) {
  if (B == B_ && T == T_) return;
  check_shape(B, T);
  B_ = B;
  T_ = T;
  const int64_t N = static_cast<int64_t>(B) * T, C = cfg_.hidden_size;
  const int64_t R = opt_.rows(static_cast<int>(N), store_.tp_size());  // residual-stream rows here
  const Device dev = store_.device();
  res_.clear();
  inner_.clear();
  // A pipeline stage keeps its residual stream in the slots of its micro-batches in flight.
  for (int l = 0; l <= cfg_.num_layers && pipe_.stages == 1; ++l) {
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
  logits_ = output_ ? Tensor({N, output_->vocab_local()}, dev) : Tensor();
  dres_ = Tensor({R, C}, dev);
  losses_ = Tensor({N}, dev);
  dloss_ = Tensor({N}, dev);
  if (dev != Device::CPU) tokens_ = Tensor({2 * N}, dev);
}

void GPTModel::set_context_parallel(Comm& cp, const std::string& type) {
  cp_rank_ = cp.rank();
  cp_size_ = cp.size();
  for (auto& b : blocks_)
    if (b) b->set_context_parallel(&cp, type);
  if (rotary_ && cp_size_ > 1) {
    const int Tl = cfg_.seq_length / cp_size_;
    std::vector<int> pos(Tl);
    for (int r = 0; r < Tl; ++r) pos[r] = cp_position(r, Tl / 2, cp_rank_, cp_size_);
    rotary_->select_positions(pos);
  }
}

// Learned positions: rows [0, T) of the table, or under context parallelism this rank's two
// chunks of rows (T = 2 Tc local rows of each sequence).
void GPTModel::positions(float* res0, float* dpos, const float* dres, int B, int T) {
  const int C = cfg_.hidden_size;
  const Device dev = store_.device();
  if (cp_size_ == 1) {
    if (res0) ops::position_forward(dev, res0, store_.value(pos_), B, T, C);
    else ops::position_backward(dev, dpos, dres, B, T, C);
    return;
  }
  const int Tc = T / 2;
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < 2; ++c) {
      const size_t row = (static_cast<size_t>(b) * T + c * Tc) * C;
      const size_t at = static_cast<size_t>(cp_position(c * Tc, Tc, cp_rank_, cp_size_)) * C;
      if (res0) ops::position_forward(dev, res0 + row, store_.value(pos_) + at, 1, Tc, C);
      else ops::position_backward(dev, dpos + at, dres + row, 1, Tc, C);
    }
}

void GPTModel::embed_forward(float* res0, const int32_t* x, int B, int T, Comm& tp) {
  const int N = B * T, C = cfg_.hidden_size;
  const Device dev = store_.device();
  if (!opt_.sequence_parallel) {
    embed_->forward(res0, x, N, tp);
    if (pos_ >= 0) positions(res0, nullptr, nullptr, B, T);
  } else if (pos_ >= 0) {  // Megatron: positions join the whole embedding, then each rank keeps its rows
    float* full = ws_.get("sp.full", static_cast<size_t>(N) * C);
    embed_->forward(full, x, N, tp);
    positions(full, nullptr, nullptr, B, T);
    scatter_to_sp_region(dev, full, res0, N, C, tp.rank(), tp.size());
  } else {
    embed_->forward_scattered(res0, x, N, tp, ws_);
  }
}

void GPTModel::embed_backward(float* dres, const int32_t* x, int B, int T, Comm& tp) {
  const int N = B * T, C = cfg_.hidden_size;
  // Under CAAT the residual gradient is a per-rank partial sum: make it whole once here.
  if (opt_.caat) tp.all_reduce(dres, static_cast<size_t>(N) * C, "blocks.input.bwd");
  const float* d_embed = dres;
  if (opt_.sequence_parallel) {  // the backward of the scatter: every row's gradient on every rank
    float* full = ws_.get("sp.full", static_cast<size_t>(N) * C);
    gather_from_sp_region(tp, dres, full, N, C, "embed.bwd");
    d_embed = full;
  }
  if (pos_ >= 0) positions(nullptr, store_.grad(pos_), d_embed, B, T);
  embed_->backward(d_embed, x, N);
}

double GPTModel::head(const float* last, const int32_t* y, int B, int T, Comm& tp, bool backward,
                      float grad_scale, float* token_losses) {
  const int N = B * T, C = cfg_.hidden_size;
  const int R = opt_.rows(N, tp.size());
  const Device dev = store_.device();
  final_norm_->forward(final_out_.data(), last, R);
  output_->forward(logits_.data(), final_out_.data(), N, tp, ws_);
  ce_.forward(losses_.data(), logits_.data(), y, N, output_->vocab_local(), output_->vocab_start(), tp);
  const double loss_sum = ops::sum(dev, losses_.data(), N);
  if (token_losses) {
    if (dev == Device::CPU) std::memcpy(token_losses, losses_.data(), N * sizeof(float));
    else losses_.copy_to_host(token_losses);
  }
  if (!backward) return loss_sum;
  float* d_norm = ws_.get("block.d_norm", static_cast<size_t>(R) * C);
  ops::fill(dev, dloss_.data(), grad_scale, N);
  ce_.backward(logits_.data(), y, dloss_.data(), N, output_->vocab_local(), output_->vocab_start());
  output_->backward(d_norm, logits_.data(), final_out_.data(), N, tp, !opt_.caat, ws_);
  ops::fill(dev, dres_.data(), 0.0f, dres_.numel());
  final_norm_->backward(dres_.data(), d_norm, last, R);
  return loss_sum;
}

double GPTModel::step(const int32_t* x, const int32_t* y, int B, int T, Comm& tp, bool backward,
                      float grad_scale, float* token_losses) {
  if (pipe_.stages > 1) throw std::logic_error("GPTModel::step on a pipeline stage: use pipe_forward/pipe_backward");
  ensure(B, T);
  const int N = B * T, L = cfg_.num_layers;
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
  embed_forward(res_[0].data(), x, B, T, tp);
  for (int l = 0; l < L; ++l) forward_block(l, B, T, tp, backward);
  const double loss_sum = head(res_[L].data(), y, B, T, tp, backward, grad_scale, token_losses);
  if (!backward) return loss_sum;

  // backward (head() left the gradient at the last block's output in dres_)
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
  embed_backward(dres_.data(), x, B, T, tp);
  return loss_sum;
}

Workspace& GPTModel::slot_pool(int slot, int layer) {
  auto& p = slot_pools_[{slot, layer}];
  if (!p) p = std::make_unique<Workspace>(store_.device());
  return *p;
}

double GPTModel::pipe_forward(int chunk, int slot, const int32_t* x, const int32_t* y, const float* in,
                              float* out, int B, int T, Comm& tp, bool backward, float grad_scale,
                              float* token_losses) {
  ensure(B, T);
  const int N = B * T, C = cfg_.hidden_size, L = cfg_.num_layers;
  const size_t RC = static_cast<size_t>(opt_.rows(N, tp.size())) * C;
  const Device dev = store_.device();
  const int b = pipe_.chunk_begin(chunk, L), e = b + pipe_.layers_per_chunk(L);
  // Each block's input lives in its slot pool ("res.in"): the block's backward needs it.
  auto input_of = [&](int l) { return slot_pool(slot, l).get("res.in", RC); };
  if (pipe_.first_virtual(chunk)) {
    // The tokens stay in the slot for the embedding's backward (on the device where it runs).
    Workspace& first = slot_pool(slot, b);
    Tensor tok = first.tensor("tokens", {N});
    if (dev == Device::CPU) std::memcpy(tok.data(), x, N * sizeof(int32_t));
    else tok.copy_from_host(reinterpret_cast<const float*>(x));
    embed_forward(input_of(b), reinterpret_cast<const int32_t*>(tok.data()), B, T, tp);
  } else {
    ops::copy(dev, input_of(b), in, RC);
  }
  const bool last = pipe_.last_virtual(chunk);
  float* last_out = last ? ws_.get("pipe.last_out", RC) : out;
  for (int l = b; l < e; ++l) {
    blocks_[l]->set_saved_pool(&slot_pool(slot, l), true);
    blocks_[l]->forward(l + 1 < e ? input_of(l + 1) : last_out, input_of(l), B, T, tp, ws_);
  }
  if (!last) return 0.0;
  const int32_t* targets = y;
  if (dev != Device::CPU) {
    tokens_.flat(0, N, {N}).copy_from_host(reinterpret_cast<const float*>(y));
    targets = reinterpret_cast<const int32_t*>(tokens_.data());
  }
  const double loss_sum = head(last_out, targets, B, T, tp, backward, grad_scale, token_losses);
  if (backward) ops::copy(dev, slot_pool(slot, e - 1).get("pipe.dout", RC), dres_.data(), RC);
  return loss_sum;
}

void GPTModel::pipe_backward(int chunk, int slot, const float* dout, float* din, int B, int T, Comm& tp) {
  const int N = B * T, C = cfg_.hidden_size, L = cfg_.num_layers;
  const size_t RC = static_cast<size_t>(opt_.rows(N, tp.size())) * C;
  const Device dev = store_.device();
  const int b = pipe_.chunk_begin(chunk, L), e = b + pipe_.layers_per_chunk(L);
  float* d = dres_.data();
  ops::copy(dev, d, pipe_.last_virtual(chunk) ? slot_pool(slot, e - 1).get("pipe.dout", RC) : dout, RC);
  for (int l = e - 1; l >= b; --l) {
    Workspace& pool = slot_pool(slot, l);
    blocks_[l]->set_saved_pool(&pool, true);
    blocks_[l]->backward(d, pool.get("res.in", RC), B, T, tp, ws_);
  }
  if (!pipe_.first_virtual(chunk)) {
    ops::copy(dev, din, d, RC);
    return;
  }
  embed_backward(d, reinterpret_cast<const int32_t*>(slot_pool(slot, b).get("tokens", N)), B, T, tp);
}

void GPTModel::set_recompute(const RecomputeOptions& r) {
  r.validate(cfg_.num_layers);
  if (r.full() && pipe_.stages > 1)
    throw std::invalid_argument("--recompute-granularity full is not supported with pipeline parallelism yet "
                                "(selective is)");
  recompute_ = r;
  pools_.clear();
  for (int l = 0; l < cfg_.num_layers; ++l) {
    if (!blocks_[l]) continue;
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

MemoryEstimate GPTModel::memory_estimate(int B, int T, int in_flight) const {
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
  const int n = static_cast<int>(N), tp = store_.tp_size();
  if (pipe_.stages > 1) {
    // A stage: per micro-batch in flight, each of its blocks' input and saved activations (and
    // the tokens or the loss gradient at the chunk ends); once, the loss head's buffers, the
    // temporaries and the received and sent activations.
    double held = 0;
    for (const auto& b : blocks_)
      if (b) held += R * C + static_cast<double>(b->saved_floats(n));
    double a = in_flight * (held + R * C) + 4 * R * C + 6 * N;
    if (output_) a += N * output_->vocab_local();
    if (opt_.sequence_parallel) a += 2 * N * C;
    for (const auto& b : blocks_)
      if (b) { a += static_cast<double>(b->scratch_floats(n)); break; }
    m.activations = a * f;
    return m;
  }
  double a = (L + 3) * R * C + N * output_->vocab_local() + 6 * N;
  if (opt_.sequence_parallel) a += 2 * N * C;
  // Full recompute: a recomputed block keeps its collective tape and its norms' statistics
  // instead of its saved activations, which exist again for one unit at a time in backward;
  // the inputs of a unit's later blocks share (units' size - 1) buffers.
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
  if (pipe_.first()) {
    if (!opt_.sequence_parallel) {
      e["embed.fwd"] += NC;
    } else {
      // learned positions: all-reduce, add, keep the rows (no traffic); else a reduce-scatter
      if (pos_ >= 0) e["embed.fwd"] += NC;
      else e.gathered["embed.fwd"] += NC;
      e.gathered["embed.bwd"] += NC;
    }
  }
  for (const auto& b : blocks_)
    if (b) b->comm_elements(N, e);
  if (output_) {
    output_->comm_elements(N, !opt_.caat, e);
    e["ce.max"] += N;
    e["ce.target"] += N;
    e["ce.sumexp"] += N;
  }
  if (opt_.caat && pipe_.first()) e["blocks.input.bwd"] += NC;
  if (opt_.caat || opt_.sequence_parallel) {
    size_t n = 0;
    for (const ParamSpec& s : store_.specs())
      if (partial_grad(s)) n += s.numel();
    e["replicated.grad"] += static_cast<double>(n);  // once per iteration, not per micro-batch
  }
  return e;
}

}  // namespace lossytp
