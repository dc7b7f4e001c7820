#include "sim/ring_collectives.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kernels/ops.h"
#include "sim/comm.h"
#include "sim/wire_precision.h"

#ifdef LOSSYTP_HAVE_CUDA
#include "kernels/cuda/ops.h"
#endif

namespace lossytp {

namespace {

inline float combine(float a, float b, ReduceOp op) { return op == ReduceOp::Sum ? a + b : std::max(a, b); }

// Floor split of n elements into p chunks.
inline size_t chunk_begin(size_t n, int p, int c) { return n * static_cast<size_t>(c) / p; }

// Elements per packet of a plan.
inline size_t elems_per_packet(const net::DeliveryPlan& plan, size_t elem_bytes) {
  return std::max<size_t>(1, plan.packet_bytes / std::max<size_t>(1, elem_bytes));
}

// Receives one hop's block, asks the model what arrived, applies it, counts it.
struct Hop {
  HopContext& ctx;

  // send is rounded in place under wire_bf16 (it is this rank's copy of what it puts on the wire).
  void run(int hop, float* send, size_t send_len, float* own, size_t recv_len, bool reduce,
           ReduceOp op, int phase) {
    const size_t eb = wire_elem_bytes(ctx.wire_bf16);
    if (ctx.wire_bf16) round_to_bf16(ctx.device, send, send_len);
    Backend& b = ctx.backend;
    const int p = b.size(), r = b.rank();
    const int next = (r + 1) % p, prev = (r + p - 1) % p;
    float* recv = ctx.scratch->recv.floats(std::max<size_t>(recv_len, 1));
    b.sendrecv(send, send_len * sizeof(float), next, recv, recv_len * sizeof(float), prev,
               1000 + hop);
    SiteCounters& c = ctx.counters;
    c.messages += 1;
    c.bytes += static_cast<int64_t>(send_len * eb);
    net::Fill fill = net::Fill::Zero;
    float rescale = 1.0f;
    net::DeliveryPlan plan;
    if (ctx.spec) {
      net::Message m = ctx.message;
      m.src = prev;
      m.dst = r;
      m.hop = hop;
      m.bytes = recv_len * eb;
      m.elem_bytes = eb;
      plan = ctx.spec->plan(m, ctx.seed);
      fill = ctx.spec->fill;
      if (fill == net::Fill::Rescale) rescale = static_cast<float>(1.0 / std::max(1e-12, 1.0 - ctx.spec->stationary_loss_rate()));
    } else {
      static const net::NetSpec exact{};
      plan.packet_bytes = exact.packet_payload_bytes(eb);
      plan.packets = exact.packet_count(recv_len * eb, eb);
    }
    c.packets += static_cast<int64_t>(plan.packets);
    if (ctx.spec) c.packets_exposed += static_cast<int64_t>(plan.packets);
    c.packets_lost += static_cast<int64_t>(plan.lost);
    c.retransmissions += static_cast<int64_t>(plan.retransmissions);
    c.sim_seconds += plan.seconds;
    const size_t begin = static_cast<size_t>(own - base);
    float* stale = fill == net::Fill::Stale ? ctx.stale->get(ctx.message.site, phase, total) + begin : nullptr;
    c.elements_filled += static_cast<int64_t>(apply_delivery_on(
        ctx.device, own, recv, recv_len, plan, fill, reduce, op, rescale, stale, ctx.scratch->mask, eb));
    // the partial sum is what this rank sends on: bf16 too
    if (ctx.wire_bf16 && reduce) round_to_bf16(ctx.device, own, recv_len);
  }
  // the full buffer, for positions in the stale store
  const float* base = nullptr;
  size_t total = 0;
};

void require_scratch(const HopContext& ctx) {
  if (!ctx.scratch) throw std::logic_error("ring collective without scratch buffers (HopContext::scratch)");
}

}  // namespace

size_t apply_delivery(float* own, const float* recv, size_t len, const net::DeliveryPlan& plan,
                      net::Fill fill, bool reduce, ReduceOp op, float rescale, float* stale,
                      size_t elem_bytes) {
  const bool sum = op == ReduceOp::Sum;
  const float scale = (fill == net::Fill::Rescale && reduce && sum) ? rescale : 1.0f;
  auto deliver = [&](size_t a, size_t b) {
    if (reduce) {
      if (sum && scale == 1.0f) for (size_t i = a; i < b; ++i) own[i] += recv[i];
      // an explicit fused multiply-add: the CUDA twin does the same, bit for bit
      else if (sum) for (size_t i = a; i < b; ++i) own[i] = std::fma(scale, recv[i], own[i]);
      else for (size_t i = a; i < b; ++i) own[i] = combine(own[i], recv[i], op);
    } else {
      std::memcpy(own + a, recv + a, (b - a) * sizeof(float));
    }
    if (stale) std::memcpy(stale + a, recv + a, (b - a) * sizeof(float));
  };
  auto lose = [&](size_t a, size_t b) {
    switch (fill) {
      case net::Fill::Zero:
        if (reduce) { if (!sum) for (size_t i = a; i < b; ++i) own[i] = combine(own[i], 0.0f, op); }
        else std::fill(own + a, own + b, 0.0f);
        break;
      case net::Fill::Local:
      case net::Fill::Rescale:  // nothing to rescale: the receiver keeps what it has
        break;
      case net::Fill::Stale:
        if (reduce) for (size_t i = a; i < b; ++i) own[i] = combine(own[i], stale[i], op);
        else std::memcpy(own + a, stale + a, (b - a) * sizeof(float));
        break;
    }
  };
  if (plan.lost_mask.empty()) {
    deliver(0, len);
    return 0;
  }
  const size_t epp = elems_per_packet(plan, elem_bytes);
  size_t filled = 0;
  for (size_t k = 0; k < plan.lost_mask.size(); ++k) {
    const size_t a = k * epp, b = std::min(len, a + epp);
    if (a >= len) break;
    if (plan.lost_mask[k]) { lose(a, b); filled += b - a; }
    else deliver(a, b);
  }
  return filled;
}

size_t apply_delivery_on(Device dev, float* own, const float* recv, size_t len,
                         const net::DeliveryPlan& plan, net::Fill fill, bool reduce, ReduceOp op,
                         float rescale, float* stale, DeviceBuffer& mask_scratch,
                         size_t elem_bytes) {
  if (dev == Device::CPU)
    return apply_delivery(own, recv, len, plan, fill, reduce, op, rescale, stale, elem_bytes);
#ifdef LOSSYTP_HAVE_CUDA
  const size_t epp = elems_per_packet(plan, elem_bytes);
  size_t filled = 0;
  const uint8_t* mask = nullptr;
  if (!plan.lost_mask.empty()) {
    // the same count as the host function: whole lost packets, the last one cut at len
    for (size_t k = 0; k < plan.lost_mask.size(); ++k) {
      const size_t a = k * epp, b = std::min(len, a + epp);
      if (a >= len) break;
      if (plan.lost_mask[k]) filled += b - a;
    }
    // Upload into reused scratch: a copy from pageable memory first waits for the default
    // stream (so the previous hop's kernel is done reading this scratch), and the host mask may
    // go once it returns.
    uint8_t* m = mask_scratch.u8(plan.lost_mask.size());
    cuda::to_device(m, plan.lost_mask.data(), plan.lost_mask.size());
    mask = m;
  }
  cuda::apply_delivery(own, recv, len, mask, epp, static_cast<int>(fill), reduce,
                       op == ReduceOp::Max, rescale, stale);
  return filled;
#else
  throw std::runtime_error("a ring hop on CUDA buffers needs a build with CUDA");
#endif
}

void ring_all_reduce(HopContext& ctx, float* buf, size_t n, ReduceOp op) {
  const int p = ctx.backend.size(), r = ctx.backend.rank();
  if (p == 1) return;
  require_scratch(ctx);
  Hop hop{ctx};
  hop.base = buf;
  hop.total = n;
  auto chunk = [&](int c) { c = ((c % p) + p) % p; return std::make_pair(chunk_begin(n, p, c), chunk_begin(n, p, c + 1)); };
  // reduce-scatter: after p-1 hops rank r holds the full sum of chunk r+1
  for (int s = 0; s < p - 1; ++s) {
    auto [sa, sb] = chunk(r - s);
    auto [ra, rb] = chunk(r - s - 1);
    hop.run(s, buf + sa, sb - sa, buf + ra, rb - ra, true, op, 0);
  }
  // all-gather: pass the reduced chunks around the ring
  for (int s = 0; s < p - 1; ++s) {
    auto [sa, sb] = chunk(r + 1 - s);
    auto [ra, rb] = chunk(r - s);
    hop.run(p - 1 + s, buf + sa, sb - sa, buf + ra, rb - ra, false, op, 1);
  }
}

void ring_all_gather(HopContext& ctx, const float* in, float* out, size_t m) {
  const int p = ctx.backend.size(), r = ctx.backend.rank();
  require_scratch(ctx);
  ops::copy(ctx.device, out + static_cast<size_t>(r) * m, in, m);
  Hop hop{ctx};
  hop.base = out;
  hop.total = m * p;
  for (int s = 0; s < p - 1; ++s) {
    const int sc = ((r - s) % p + p) % p, rc = ((r - s - 1) % p + p) % p;
    hop.run(s, out + sc * m, m, out + rc * m, m, false, ReduceOp::Sum, 1);
  }
}

void ring_reduce_scatter(HopContext& ctx, const float* in, float* out, size_t m) {
  const int p = ctx.backend.size(), r = ctx.backend.rank();
  require_scratch(ctx);
  float* work = ctx.scratch->work.floats(std::max<size_t>(m * p, 1));
  ops::copy(ctx.device, work, in, m * p);
  Hop hop{ctx};
  hop.base = work;
  hop.total = m * p;
  // after p-1 hops rank r holds the full sum of block r (start one block further back)
  for (int s = 0; s < p - 1; ++s) {
    const int sc = ((r - s - 1) % p + p) % p, rc = ((r - s - 2) % p + p) % p;
    hop.run(s, work + sc * m, m, work + rc * m, m, true, ReduceOp::Sum, 0);
  }
  ops::copy(ctx.device, out, work + static_cast<size_t>(r) * m, m);
}

}  // namespace lossytp
