#include "sim/comm.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/ops.h"
#include "sim/ring_collectives.h"
#include "sim/wire_precision.h"

namespace lossytp {

namespace {
const net::LinkParams kDefaultLink{};
const net::NetSpec kDefaultSpec{};  // packet size and link of runs without --net
}  // namespace

SiteCounters CommStats::total() const {
  SiteCounters t;
  for (const auto& [name, c] : sites_) {
    t.calls += c.calls;
    t.messages += c.messages;
    t.bytes += c.bytes;
    t.packets += c.packets;
    t.packets_exposed += c.packets_exposed;
    t.packets_lost += c.packets_lost;
    t.retransmissions += c.retransmissions;
    t.elements_filled += c.elements_filled;
    t.sim_seconds += c.sim_seconds;
  }
  return t;
}

float* StaleStore::get(const std::string& site, int phase, size_t n) {
  auto it = bufs_.find({site, phase});
  if (it == bufs_.end()) it = bufs_.emplace(std::make_pair(site, phase), DeviceBuffer(dev_, 0)).first;
  return it->second.floats(std::max<size_t>(n, 1), true);  // grows with zeros, keeps what arrived
}

Comm::Comm(std::unique_ptr<Backend> backend, std::string group, std::shared_ptr<CommStats> stats)
    : backend_(std::move(backend)), group_(std::move(group)), stats_(std::move(stats)),
      device_(backend_->device()), stale_(device_), scratch_(device_) {
  if (!stats_) stats_ = std::make_shared<CommStats>();
}

void Comm::set_device(Device d) {
  if (d == device_) return;
  if (d != backend_->device())
    throw std::invalid_argument(std::string("Comm (group ") + group_ + "): the " + backend_->name() +
                                " backend moves " + device_name(backend_->device()) +
                                " buffers, not " + device_name(d));
  device_ = d;
  stale_ = StaleStore(d);
  scratch_ = CommScratch(d);
  send_bufs_.clear();
}

HopContext Comm::hop_context(const std::string& site, net::CollKind kind, SiteCounters& c, bool lossy) {
  return HopContext{*backend_, lossy ? net_.get() : nullptr, message(site, kind), seed_, &stale_, c,
                    device_, &scratch_, call_bf16_};
}

size_t Comm::elem_bytes() const { return wire_elem_bytes(call_bf16_); }

void Comm::to_wire(float* buf, size_t n) const {
  if (call_bf16_) round_to_bf16(device_, buf, n);
}

void Comm::set_network(std::shared_ptr<const net::NetSpec> spec, uint64_t run_seed) {
  // links= naming a rank outside this group: one clear error before training.
  if (spec) spec->check_ranks(size(), group_);
  net_ = std::move(spec);
  seed_ = net_ && net_->has_seed ? net_->seed : run_seed;
}

void Comm::set_link_states(std::shared_ptr<net::LinkStates> states) {
  if (!states) throw std::invalid_argument("Comm::set_link_states: null store");
  link_states_ = std::move(states);
}

Comm::Path Comm::path_for(const std::string& site) const {
  if (!net_ || net_->lossless() || size() == 1 || !net_->in_scope(group_, site)) return Path::Native;
  if (net_->transport == net::Transport::Reliable) return Path::Reliable;
  // transport=bounded: the plan carries the retransmissions, the lossy path applies what stays lost
  return net_->mode == net::Mode::Ring ? Path::Ring : Path::Endpoint;
}

net::Message Comm::message(const std::string& site, net::CollKind kind) const {
  net::Message m;
  m.site = site;
  m.group = group_;
  m.kind = kind;
  m.elem_bytes = elem_bytes();
  m.iteration = iteration_;
  m.call = call_;
  m.link_states = link_states_.get();
  return m;
}

void Comm::count_native(SiteCounters& c, int64_t hops, size_t bytes_per_hop, bool packets,
                        size_t elem) const {
  if (elem == 0) elem = elem_bytes();
  const net::LinkParams& link = net_ ? net_->link : kDefaultLink;
  c.messages += hops;
  c.bytes += hops * static_cast<int64_t>(bytes_per_hop);
  if (packets)
    c.packets += hops * static_cast<int64_t>((net_ ? *net_ : kDefaultSpec).packet_count(bytes_per_hop, elem));
  c.sim_seconds += hops * (link.latency_s + bytes_per_hop / link.bandwidth_Bps);
}

void Comm::count_reliable(SiteCounters& c, const std::string& site, net::CollKind kind, int hops,
                          size_t bytes_per_hop) {
  const int p = size(), r = rank();
  for (int h = 0; h < hops; ++h) {
    net::Message m = message(site, kind);
    m.src = (r + p - 1) % p;
    m.dst = r;
    m.hop = h;
    m.bytes = bytes_per_hop;
    net::DeliveryPlan plan = net_->plan(m, seed_);
    c.messages += 1;
    c.bytes += static_cast<int64_t>(bytes_per_hop);
    c.packets += static_cast<int64_t>(plan.packets);
    c.packets_exposed += static_cast<int64_t>(plan.packets);
    c.retransmissions += static_cast<int64_t>(plan.retransmissions);
    c.sim_seconds += plan.seconds;
  }
}

void Comm::mask_contribution(float* buf, size_t n, const std::string& site, net::CollKind kind,
                             SiteCounters& c) {
  net::Message m = message(site, kind);
  m.src = rank();
  m.dst = -1;
  m.bytes = n * elem_bytes();
  net::DeliveryPlan plan = net_->plan(m, seed_);
  c.packets += static_cast<int64_t>(plan.packets);
  c.packets_exposed += static_cast<int64_t>(plan.packets);
  c.packets_lost += static_cast<int64_t>(plan.lost);
  // transport=bounded: the retransmission rounds (and the wait up to the deadline) of this
  // contribution, on top of the native hops' time that count_native counted.
  c.retransmissions += static_cast<int64_t>(plan.retransmissions);
  c.sim_seconds += std::max(0.0, plan.seconds - (net_->link.latency_s + static_cast<double>(m.bytes) /
                                                                          net_->link.bandwidth_Bps));
  // A masked contribution has no receiver-side value to keep: local behaves as zero. Under
  // fill=count the contribution is masked as zero and scratch_.counts marks what arrived (1) or
  // not (0), for count_fill() after the reduction.
  net::Fill fill = net_->fill == net::Fill::Local ? net::Fill::Zero : net_->fill;
  if (fill == net::Fill::Count) {
    if (device_ != Device::CPU) throw std::runtime_error("fill=count is not yet implemented on CUDA");
    fill = net::Fill::Zero;
    float* arrived = scratch_.counts.floats(std::max<size_t>(n, 1));
    float* ones = scratch_.counts_recv.floats(std::max<size_t>(n, 1));
    if (net_->encode == net::Encode::Hadamard) {
      // a block whose encoded coordinates arrived in fraction f decodes to f times the
      // contribution in expectation (over the signs): f is its count there
      hadamard_arrived_fractions(arrived, n, plan, net_->hadamard_block(elem_bytes()), elem_bytes());
    } else {
      std::fill(ones, ones + n, 1.0f);
      std::fill(arrived, arrived + n, 0.0f);
      apply_delivery(arrived, ones, n, plan, net::Fill::Zero, false, ReduceOp::Sum, 1.0f, nullptr, elem_bytes());
    }
  }
  float* stale = fill == net::Fill::Stale ? stale_.get(site, 2, n) : nullptr;
  const float rescale = static_cast<float>(1.0 / std::max(1e-12, 1.0 - net_->loss_rate_for(m)));
  if (fill == net::Fill::Rescale) {
    // delivered elements are scaled (unbiased sum), lost ones contribute zero
    ops::scale_inplace(device_, buf, rescale, n);
    fill = net::Fill::Zero;
  }
  // Apply the plan in place: the "received" block is the contribution itself.
  float* copy = scratch_.original.floats(std::max<size_t>(n, 1));
  ops::copy(device_, copy, buf, n);
  if (net_->encode == net::Encode::Hadamard) {
    // encode=hadamard: the contribution is masked in the encoded domain, then decoded
    const size_t block = net_->hadamard_block(elem_bytes());
    const uint64_t key = net::hadamard_key(m, seed_);
    ops::hadamard_encode(device_, copy, n, block, key);
    c.elements_filled += static_cast<int64_t>(apply_delivery_encoded(
        device_, buf, copy, n, plan, fill, false, ReduceOp::Sum, 1.0f, stale, block, key,
        scratch_.hadamard_ref, elem_bytes()));
    return;
  }
  ops::fill(device_, buf, 0.0f, n);
  c.elements_filled += static_cast<int64_t>(apply_delivery_on(
      device_, buf, copy, n, plan, fill, false, ReduceOp::Sum, 1.0f, stale, scratch_.mask, elem_bytes()));
}

// fill=count after an endpoint-mode reduction: each element's sum scaled by contributors /
// contributions that arrived (0 when none did). The arrival marks of mask_contribution are
// summed natively (metadata of the packets: not counted). block: reduce-scatter, n per rank.
void Comm::count_fill(float* out, size_t n, const size_t* block) {
  float* arrived = scratch_.counts.floats();
  float* count = scratch_.counts_recv.floats(std::max<size_t>(n, 1));
  if (block) backend_->reduce_scatter(arrived, count, *block);
  else {
    backend_->all_reduce(arrived, n, ReduceOp::Sum);
    count = arrived;
  }
  const float p = static_cast<float>(size());
  for (size_t i = 0; i < n; ++i) out[i] = count[i] > 0 ? out[i] * (p / count[i]) : 0.0f;
}

// Names the site and group in a timeout raised anywhere below a collective.
template <typename F>
void Comm::guarded(const std::string& site, F&& body) {
  try {
    body();
  } catch (const CommTimeout& e) {
    throw CommTimeout("collective at site '" + site + "' (group " + group_ + ", iteration " +
                      std::to_string(iteration_) + "): " + e.what());
  }
}

// The cross-entropy statistics (row max, target logit, sum of exponentials) stay fp32 on the
// wire under bf16, as in Megatron: a bf16 max or sum would bias every token's loss.
void Comm::enter(const std::string& site) { call_bf16_ = wire_bf16_ && site.rfind("ce.", 0) != 0; }

void Comm::all_reduce(float* buf, size_t n, const std::string& site, ReduceOp op) {
  if (from_tape(buf, n, site)) return;
  enter(site);
  guarded(site, [&] { all_reduce_impl(buf, n, site, op); });
  onto_tape(buf, n, site);
}

void Comm::all_gather(const float* in, float* out, size_t m, const std::string& site) {
  if (from_tape(out, m * size(), site, in)) return;
  enter(site);
  guarded(site, [&] { all_gather_impl(in, out, m, site); });
  onto_tape(out, m * size(), site);
}

void Comm::reduce_scatter(const float* in, float* out, size_t m, const std::string& site) {
  if (from_tape(out, m, site, in)) return;
  enter(site);
  guarded(site, [&] { reduce_scatter_impl(in, out, m, site); });
  onto_tape(out, m, site);
}

size_t CollectiveTape::floats() const {
  size_t n = 0;
  for (const Entry& e : entries_) n += e.data.bytes() / sizeof(float);
  return n;
}

void Comm::record(CollectiveTape& tape) {
  if (tape_mode_ != TapeMode::Off) throw std::logic_error("Comm::record: a tape is already in use");
  tape.used_ = tape.pos_ = 0;
  tape_ = &tape;
  tape_mode_ = TapeMode::Record;
}

void Comm::replay(CollectiveTape& tape) {
  if (tape_mode_ != TapeMode::Off) throw std::logic_error("Comm::replay: a tape is already in use");
  tape.pos_ = 0;
  tape_ = &tape;
  tape_mode_ = TapeMode::Replay;
}

void Comm::stop_tape() {
  const bool short_replay = tape_mode_ == TapeMode::Replay && tape_->pos_ != tape_->used_;
  const size_t pos = tape_ ? tape_->pos_ : 0, used = tape_ ? tape_->used_ : 0;
  tape_mode_ = TapeMode::Off;
  tape_ = nullptr;
  if (short_replay)
    throw std::logic_error("recomputed forward made " + std::to_string(pos) + " collective calls, the original " +
                           std::to_string(used) + " (group " + group_ + ")");
}

// Replay: the recorded result instead of the collective. One rank: the collective's own local
// result (nothing was stored): nothing for an all-reduce, in copied to out for the others.
bool Comm::from_tape(float* out, size_t n, const std::string& site, const float* in) {
  if (tape_mode_ != TapeMode::Replay) return false;
  CollectiveTape& t = *tape_;
  if (t.pos_ >= t.used_)
    throw std::logic_error("recomputed forward: collective at site '" + site + "' beyond the " +
                           std::to_string(t.used_) + " recorded (group " + group_ + ")");
  CollectiveTape::Entry& e = t.entries_[t.pos_];
  if (e.site != site || e.n != n)
    throw std::logic_error("recomputed forward: call " + std::to_string(t.pos_) + " is '" + site + "' of " +
                           std::to_string(n) + " floats, the original forward's was '" + e.site + "' of " +
                           std::to_string(e.n) + " (group " + group_ + ")");
  ++t.pos_;
  if (n == 0) return true;
  if (size() == 1) {
    if (in && in != out) ops::copy(device_, out, in, n);
  } else {
    ops::copy(device_, out, e.data.floats(), n);
  }
  return true;
}

void Comm::onto_tape(const float* out, size_t n, const std::string& site) {
  if (tape_mode_ != TapeMode::Record) return;
  CollectiveTape& t = *tape_;
  if (t.used_ == t.entries_.size()) t.entries_.emplace_back();
  CollectiveTape::Entry& e = t.entries_[t.used_++];
  e.site = site;
  e.n = n;
  if (size() > 1 && n > 0) ops::copy(device_, e.data.floats(n), out, n);
}

void Comm::all_reduce_impl(float* buf, size_t n, const std::string& site, ReduceOp op) {
  const int p = size();
  ++call_;
  if (p == 1) return;
  SiteCounters& c = stats_->site(site);
  c.calls += 1;
  const size_t block_bytes = (n + p - 1) / p * elem_bytes();
  switch (path_for(site)) {
    case Path::Native:
      count_native(c, 2 * (p - 1), block_bytes);
      to_wire(buf, n);
      backend_->all_reduce(buf, n, op);
      to_wire(buf, n);
      break;
    case Path::Reliable:
      count_reliable(c, site, net::CollKind::AllReduce, 2 * (p - 1), block_bytes);
      to_wire(buf, n);
      backend_->all_reduce(buf, n, op);
      to_wire(buf, n);
      break;
    case Path::Endpoint:
      count_native(c, 2 * (p - 1), block_bytes, false);
      to_wire(buf, n);
      mask_contribution(buf, n, site, net::CollKind::AllReduce, c);
      backend_->all_reduce(buf, n, op);
      if (net_->fill == net::Fill::Count && op == ReduceOp::Sum) count_fill(buf, n, nullptr);
      to_wire(buf, n);
      break;
    case Path::Ring: {
      HopContext ctx = hop_context(site, net::CollKind::AllReduce, c, true);
      ring_all_reduce(ctx, buf, n, op);
      break;
    }
  }
}

void Comm::all_reduce_as_ring(float* buf, size_t n, const std::string& site, ReduceOp op) {
  if (from_tape(buf, n, site)) return;
  enter(site);
  ++call_;
  if (size() == 1) return onto_tape(buf, n, site);
  SiteCounters& c = stats_->site(site);
  c.calls += 1;
  const bool lossy = path_for(site) == Path::Ring;
  HopContext ctx = hop_context(site, net::CollKind::AllReduce, c, lossy);
  guarded(site, [&] { lossytp::ring_all_reduce(ctx, buf, n, op); });
  onto_tape(buf, n, site);
}

void Comm::all_gather_impl(const float* in, float* out, size_t m, const std::string& site) {
  block_collective(net::CollKind::AllGather, in, out, m, site);
}

void Comm::reduce_scatter_impl(const float* in, float* out, size_t m, const std::string& site) {
  block_collective(net::CollKind::ReduceScatter, in, out, m, site);
}

// All-gather and reduce-scatter: p-1 ring hops of one block of m floats each. They differ in
// what a rank contributes (its block, or all p blocks) and in the backend/ring call.
void Comm::block_collective(net::CollKind kind, const float* in, float* out, size_t m,
                            const std::string& site) {
  const int p = size();
  const bool gather = kind == net::CollKind::AllGather;
  ++call_;
  if (p == 1) { ops::copy(device_, out, in, m); return; }
  SiteCounters& c = stats_->site(site);
  c.calls += 1;
  const size_t n = gather ? m : m * p;  // this rank's contribution
  auto native = [&](const float* contribution) {
    if (gather) backend_->all_gather(contribution, out, m);
    else backend_->reduce_scatter(contribution, out, m);
    if (!gather) to_wire(out, m);  // a gathered result is bf16 already
  };
  // The contribution as it goes on the wire (in is const): a rounded copy under wire_bf16.
  auto on_wire = [&]() -> const float* {
    if (!call_bf16_) return in;
    float* mine = scratch_.masked.floats(std::max<size_t>(n, 1));
    ops::copy(device_, mine, in, n);
    to_wire(mine, n);
    return mine;
  };
  const size_t hop_bytes = m * elem_bytes();
  switch (path_for(site)) {
    case Path::Native:
      count_native(c, p - 1, hop_bytes);
      native(on_wire());
      break;
    case Path::Reliable:
      count_reliable(c, site, kind, p - 1, hop_bytes);
      native(on_wire());
      break;
    case Path::Endpoint: {
      count_native(c, p - 1, hop_bytes, false);
      float* mine = scratch_.masked.floats(std::max<size_t>(n, 1));
      ops::copy(device_, mine, in, n);
      to_wire(mine, n);
      mask_contribution(mine, n, site, kind, c);
      native(mine);
      if (!gather && net_->fill == net::Fill::Count) count_fill(out, m, &m);
      break;
    }
    case Path::Ring: {
      HopContext ctx = hop_context(site, kind, c, true);
      if (gather) ring_all_gather(ctx, in, out, m);
      else ring_reduce_scatter(ctx, in, out, m);
      break;
    }
  }
}

void Comm::broadcast(float* buf, size_t n, int root, const std::string& site) {
  if (tape_mode_ != TapeMode::Off)
    throw std::logic_error("broadcast at site '" + site + "' inside a recorded or replayed forward");
  const int p = size();
  ++call_;
  if (p == 1) return;
  // Broadcasts carry no model traffic (they distribute configuration); never lossy.
  SiteCounters& c = stats_->site(site);
  c.calls += 1;
  if (rank() == root) count_native(c, p - 1, n * sizeof(float), true, sizeof(float));  // fp32 always
  guarded(site, [&] { backend_->broadcast(buf, n * sizeof(float), root); });
}

// ---------------------------------------------------------------------------------------------
// Point-to-point messages (pipeline parallelism).

void Comm::no_tape(const char* what, const std::string& site) const {
  if (tape_mode_ != TapeMode::Off)
    throw std::logic_error(std::string(what) + " at site '" + site + "' inside a recorded or replayed forward");
}

void Comm::send(const float* buf, size_t n, int dst, int tag, const std::string& site) {
  no_tape("send", site);
  post_send(buf, n, dst, tag, site);
  stats_->site(site).calls += 1;
}

void Comm::post_send(const float* buf, size_t n, int dst, int tag, const std::string& site) {
  enter(site);
  if (sends_ == send_bufs_.size()) send_bufs_.emplace_back(device_, 0);
  float* copy = send_bufs_[sends_++].floats(std::max<size_t>(n, 1));
  ops::copy(device_, copy, buf, n);
  to_wire(copy, n);
  const Path path = path_for(site);
  if (net_ && net_->encode == net::Encode::Hadamard && (path == Path::Ring || path == Path::Endpoint)) {
    // encode=hadamard: the payload travels encoded; the receiver (p2p_recv) decodes it with the
    // same key: the message as the receiver describes it
    net::Message m = message(site, net::CollKind::P2P);
    m.call = tag;
    m.src = rank();
    m.dst = dst;
    m.hop = 0;
    ops::hadamard_encode(device_, copy, n, net_->hadamard_block(elem_bytes()), net::hadamard_key(m, seed_));
  }
  SiteCounters& c = stats_->site(site);
  c.messages += 1;
  c.bytes += static_cast<int64_t>(n * elem_bytes());
  guarded(site, [&] { backend_->isend(copy, n * sizeof(float), dst, tag); });
}

void Comm::wait_sends() {
  guarded("(point-to-point sends)", [&] { backend_->wait_isends(); });
  sends_ = 0;
}

double Comm::recv(float* buf, size_t n, int src, int tag, const std::string& site) {
  no_tape("recv", site);
  enter(site);
  double seconds = 0.0;
  guarded(site, [&] { seconds = p2p_recv(buf, n, src, tag, site, false); });
  return seconds;
}

void Comm::all_to_all(const float* in, float* out, size_t m, const std::string& site) {
  no_tape("all_to_all", site);
  const int p = size(), r = rank();
  const int tag = next_tag();
  enter(site);
  ops::copy(device_, out + r * m, in + r * m, m);
  to_wire(out + r * m, m);
  if (p == 1) return;
  stats_->site(site).calls += 1;
  // Every send is posted before any recv (sends never block), nearest peers first.
  for (int k = 1; k < p; ++k) {
    const int dst = (r + k) % p;
    post_send(in + dst * m, m, dst, tag, site);
  }
  for (int k = 1; k < p; ++k) {
    const int src = (r - k + p) % p;
    recv(out + src * m, m, src, tag, site);
  }
  wait_sends();
}

double Comm::exchange_add(float* buf, size_t n, int peer, int tag, const std::string& site) {
  no_tape("exchange_add", site);
  send(buf, n, peer, tag, site);  // enter(site), rounds the copy under bf16
  to_wire(buf, n);                // this side's term as the peer sees it
  double seconds = 0.0;
  guarded(site, [&] { seconds = p2p_recv(buf, n, peer, tag, site, true); });
  to_wire(buf, n);
  return seconds;
}

double Comm::p2p_recv(float* buf, size_t n, int src, int tag, const std::string& site, bool reduce) {
  SiteCounters& c = stats_->site(site);
  net::Message m = message(site, net::CollKind::P2P);
  m.call = tag;
  m.src = src;
  m.dst = rank();
  m.hop = 0;
  m.bytes = n * elem_bytes();
  // Out of scope, lossless or no model: an exact plan (packets and link time only).
  const Path path = path_for(site);
  const net::DeliveryPlan plan = (net_ ? *net_ : kDefaultSpec).plan(m, seed_);
  c.packets += static_cast<int64_t>(plan.packets);
  if (path != Path::Native) c.packets_exposed += static_cast<int64_t>(plan.packets);
  c.packets_lost += static_cast<int64_t>(plan.lost);
  c.retransmissions += static_cast<int64_t>(plan.retransmissions);
  c.sim_seconds += plan.seconds;
  const bool lossy = path == Path::Ring || path == Path::Endpoint;
  if (!lossy && !reduce) {  // exact data: straight into buf
    backend_->recv(buf, n * sizeof(float), src, tag);
    return plan.seconds;
  }
  float* in = scratch_.recv.floats(std::max<size_t>(n, 1));
  backend_->recv(in, n * sizeof(float), src, tag);
  if (!lossy) {
    ops::add_inplace(device_, buf, in, n);
    return plan.seconds;
  }
  net::Fill fill = net_->fill;
  const float rescale = static_cast<float>(1.0 / std::max(1e-12, 1.0 - net_->loss_rate_for(m)));
  // A plain receive has no value of its own for a lost element: local is zero, and rescale
  // scales what arrived (below). A sum keeps its own term, as in the ring's reduce hops.
  if (!reduce && (fill == net::Fill::Local || fill == net::Fill::Rescale)) fill = net::Fill::Zero;
  // count: a plain receive sums nothing (zero); a two-rank sum keeps its own term (local)
  if (fill == net::Fill::Count) fill = reduce ? net::Fill::Local : net::Fill::Zero;
  float* stale = fill == net::Fill::Stale ? stale_.get(site, reduce ? 4 : 3, n) : nullptr;
  if (net_->encode == net::Encode::Hadamard)  // sent encoded (post_send): fill, decode, apply
    c.elements_filled += static_cast<int64_t>(apply_delivery_encoded(
        device_, buf, in, n, plan, fill, reduce, ReduceOp::Sum, rescale, stale,
        net_->hadamard_block(elem_bytes()), net::hadamard_key(m, seed_), scratch_.hadamard_ref, elem_bytes()));
  else
    c.elements_filled += static_cast<int64_t>(apply_delivery_on(
        device_, buf, in, n, plan, fill, reduce, ReduceOp::Sum, rescale, stale, scratch_.mask, elem_bytes()));
  if (!reduce && net_->fill == net::Fill::Rescale) ops::scale_inplace(device_, buf, rescale, n);
  return plan.seconds;
}

}  // namespace lossytp
