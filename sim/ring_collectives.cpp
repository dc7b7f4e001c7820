#include "sim/ring_collectives.h"

#include "kernels/cpu/ops.h"

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
    // encode=hadamard: the block goes on the wire encoded (a copy: the sent block is still this
    // rank's data), with the signs of this message (sender and receiver derive the same key)
    const bool encoded = ctx.spec && ctx.spec->encode == net::Encode::Hadamard;
    const size_t hblock = encoded ? ctx.spec->hadamard_block(eb) : 0;
    const float* wire = send;
    if (encoded) {
      float* e = ctx.scratch->encoded.floats(std::max<size_t>(send_len, 1));
      ops::copy(ctx.device, e, send, send_len);
      net::Message sm = ctx.message;
      sm.src = r;
      sm.dst = next;
      sm.hop = hop;
      ops::hadamard_encode(ctx.device, e, send_len, hblock, net::hadamard_key(sm, ctx.seed));
      wire = e;
    }
    b.sendrecv(wire, send_len * sizeof(float), next, recv, recv_len * sizeof(float), prev,
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
      if (fill == net::Fill::Rescale) rescale = static_cast<float>(1.0 / std::max(1e-12, 1.0 - ctx.spec->loss_rate_for(m)));
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
    if (encoded) {  // fills in the encoded domain, then decode, then reduce or copy
      net::Message m = ctx.message;
      m.src = prev;
      m.dst = r;
      m.hop = hop;
      const uint64_t key = net::hadamard_key(m, ctx.seed);
      if (fill == net::Fill::Count && counts) {
        // fill=count in the encoded domain: a block whose coordinates arrived in fraction f
        // brings f times the sender's partial sum in expectation, so f times its counts
        float* frac = ctx.scratch->arrived.floats(std::max<size_t>(recv_len, 1));
        hadamard_arrived_fractions(frac, recv_len, plan, hblock, eb);
        if (reduce) {
          float* cr = ctx.scratch->counts_recv.floats(std::max<size_t>(recv_len, 1));
          b.sendrecv(counts + (send - base), send_len * sizeof(float), next, cr, recv_len * sizeof(float), prev,
                     2000 + hop);
          for (size_t i = 0; i < recv_len; ++i) counts[begin + i] += frac[i] * cr[i];
          c.elements_filled += static_cast<int64_t>(apply_delivery_encoded(
              ctx.device, own, recv, recv_len, plan, net::Fill::Zero, true, op, 1.0f, nullptr, hblock, key,
              ctx.scratch->hadamard_ref, eb));
          if (ctx.wire_bf16) round_to_bf16(ctx.device, own, recv_len);
        } else {
          // all-gather phase: the decoded block divided by f (unbiased over the signs); a block
          // with nothing arrived is estimated from this rank's own partial sum, as without encoding
          float* saved = ctx.scratch->saved.floats(std::max<size_t>(recv_len, 1));
          std::memcpy(saved, own, recv_len * sizeof(float));
          c.elements_filled += static_cast<int64_t>(apply_delivery_encoded(
              ctx.device, own, recv, recv_len, plan, net::Fill::Zero, false, op, 1.0f, nullptr, hblock, key,
              ctx.scratch->hadamard_ref, eb));
          for (size_t i = 0; i < recv_len; ++i) {
            if (frac[i] >= 1.0f) continue;
            own[i] = frac[i] > 0.0f ? own[i] / frac[i] : saved[i] * static_cast<float>(p) / counts[begin + i];
          }
        }
        return;
      }
      c.elements_filled += static_cast<int64_t>(apply_delivery_encoded(
          ctx.device, own, recv, recv_len, plan, fill, reduce, op, rescale, stale, hblock,
          key, ctx.scratch->hadamard_ref, eb));
      if (ctx.wire_bf16 && reduce) round_to_bf16(ctx.device, own, recv_len);
      return;
    }
    if (fill == net::Fill::Count && counts) {
      // The contributions each element holds travel with it (packet metadata: not counted in
      // bytes) and share its packets' fates: an arrived partial sum brings its count along.
      if (reduce) {
        float* cr = ctx.scratch->counts_recv.floats(std::max<size_t>(recv_len, 1));
        b.sendrecv(counts + (send - base), send_len * sizeof(float), next, cr, recv_len * sizeof(float), prev,
                   2000 + hop);
        apply_delivery(counts + begin, cr, recv_len, plan, net::Fill::Local, true, ReduceOp::Sum, 1.0f, nullptr, eb);
        fill = net::Fill::Local;  // a lost partial sum: this rank keeps its own, and its count says so
      } else {
        // all-gather phase: an element that does not arrive is estimated from this rank's own
        // partial sum, scaled by contributors / its contributions
        apply_delivery(own, recv, recv_len, plan, net::Fill::Local, false, op, 1.0f, nullptr, eb);
        const size_t epp = elems_per_packet(plan, eb);
        size_t filled = 0;
        for (size_t k = 0; k < plan.lost_mask.size(); ++k) {
          const size_t a = k * epp, e = std::min(recv_len, a + epp);
          if (a >= recv_len) break;
          if (!plan.lost_mask[k]) continue;
          for (size_t i = a; i < e; ++i) own[i] *= static_cast<float>(p) / counts[begin + i];
          filled += e - a;
        }
        c.elements_filled += static_cast<int64_t>(filled);
        return;
      }
    } else if (fill == net::Fill::Count) {
      fill = net::Fill::Zero;  // nothing was summed: a lost element is a hole
    }
    c.elements_filled += static_cast<int64_t>(apply_delivery_on(
        ctx.device, own, recv, recv_len, plan, fill, reduce, op, rescale, stale, ctx.scratch->mask, eb));
    // the partial sum is what this rank sends on: bf16 too
    if (ctx.wire_bf16 && reduce) round_to_bf16(ctx.device, own, recv_len);
  }
  // the full buffer, for positions in the stale store
  const float* base = nullptr;
  size_t total = 0;
  // fill=count in a sum: the contributions summed into each element of the buffer so far
  float* counts = nullptr;
  // Starts the counts at one contribution per element (this rank's) when the call uses
  // fill=count on a sum (CPU only: the counts are host arithmetic).
  void start_counts(float* buf, size_t n, ReduceOp op) {
    base = buf;
    total = n;
    if (!ctx.spec || ctx.spec->fill != net::Fill::Count || op != ReduceOp::Sum) return;
    if (ctx.device != Device::CPU) throw std::runtime_error("fill=count is not yet implemented on CUDA");
    counts = ctx.scratch->counts.floats(std::max<size_t>(n, 1));
    std::fill(counts, counts + n, 1.0f);
  }
  // Unbiased aggregate of a fully reduced range: sum x contributors / contributions that arrived.
  void scale_by_counts(float* at, size_t len) const {
    if (!counts) return;
    const int p = ctx.backend.size();
    const float* k = counts + (at - base);
    for (size_t i = 0; i < len; ++i) at[i] *= static_cast<float>(p) / k[i];
  }
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
      case net::Fill::Count:  // callers that sum apply counts themselves (ring Hop, Comm)
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

void hadamard_arrived_fractions(float* frac, size_t len, const net::DeliveryPlan& plan, size_t block,
                                size_t elem_bytes) {
  const size_t epp = elems_per_packet(plan, elem_bytes);
  for (size_t a = 0; a < len;) {
    const size_t blen = cpu::hadamard_next_block(len - a, block);
    size_t arrived = blen;
    if (!plan.lost_mask.empty())
      for (size_t k = a / epp; k * epp < a + blen && k < plan.lost_mask.size(); ++k)
        if (plan.lost_mask[k]) arrived -= std::min(a + blen, (k + 1) * epp) - std::max(a, k * epp);
    std::fill(frac + a, frac + a + blen, static_cast<float>(static_cast<double>(arrived) / static_cast<double>(blen)));
    a += blen;
  }
}

size_t apply_delivery_encoded(Device dev, float* own, float* recv, size_t len,
                              const net::DeliveryPlan& plan, net::Fill fill, bool reduce, ReduceOp op,
                              float rescale, float* stale, size_t block, uint64_t key,
                              DeviceBuffer& ref_scratch, size_t elem_bytes) {
  if (dev != Device::CPU) throw std::runtime_error("encode=hadamard is not yet implemented on CUDA");
  // What stands in for a lost coordinate, in the encoded domain: the encoded stale value, or (a
  // gather under local/rescale) the encoded value this rank has; otherwise 0.
  const float* ref = nullptr;
  if (fill == net::Fill::Stale) ref = stale;
  else if (!reduce && (fill == net::Fill::Local || fill == net::Fill::Rescale)) ref = own;
  size_t filled = 0;
  if (!plan.lost_mask.empty()) {
    float* enc = nullptr;
    if (ref) {
      enc = ref_scratch.floats(std::max<size_t>(len, 1));
      std::memcpy(enc, ref, len * sizeof(float));
      ops::hadamard_encode(dev, enc, len, block, key);
    }
    const size_t epp = elems_per_packet(plan, elem_bytes);
    for (size_t k = 0; k < plan.lost_mask.size(); ++k) {
      const size_t a = k * epp, b = std::min(len, a + epp);
      if (a >= len) break;
      if (!plan.lost_mask[k]) continue;
      if (enc) std::memcpy(recv + a, enc + a, (b - a) * sizeof(float));
      else std::fill(recv + a, recv + b, 0.0f);
      filled += b - a;
    }
  }
  ops::hadamard_decode(dev, recv, len, block, key);
  if (stale) std::memcpy(stale, recv, len * sizeof(float));  // every position now holds a mix
  if (!reduce) {
    std::memcpy(own, recv, len * sizeof(float));
  } else if (op == ReduceOp::Sum) {
    // rescale: the whole decoded contribution, whose expectation is (1 - L) times the sent one
    const float scale = fill == net::Fill::Rescale ? rescale : 1.0f;
    if (scale == 1.0f) for (size_t i = 0; i < len; ++i) own[i] += recv[i];
    else for (size_t i = 0; i < len; ++i) own[i] = std::fma(scale, recv[i], own[i]);
  } else {
    for (size_t i = 0; i < len; ++i) own[i] = combine(own[i], recv[i], op);
  }
  return filled;
}

void ring_all_reduce(HopContext& ctx, float* buf, size_t n, ReduceOp op) {
  const int p = ctx.backend.size(), r = ctx.backend.rank();
  if (p == 1) return;
  require_scratch(ctx);
  Hop hop{ctx};
  hop.start_counts(buf, n, op);
  auto chunk = [&](int c) { c = ((c % p) + p) % p; return std::make_pair(chunk_begin(n, p, c), chunk_begin(n, p, c + 1)); };
  // reduce-scatter: after p-1 hops rank r holds the full sum of chunk r+1
  for (int s = 0; s < p - 1; ++s) {
    auto [sa, sb] = chunk(r - s);
    auto [ra, rb] = chunk(r - s - 1);
    hop.run(s, buf + sa, sb - sa, buf + ra, rb - ra, true, op, 0);
  }
  {
    auto [oa, ob] = chunk(r + 1);
    hop.scale_by_counts(buf + oa, ob - oa);
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
  hop.start_counts(work, m * p, ReduceOp::Sum);
  // after p-1 hops rank r holds the full sum of block r (start one block further back)
  for (int s = 0; s < p - 1; ++s) {
    const int sc = ((r - s - 1) % p + p) % p, rc = ((r - s - 2) % p + p) % p;
    hop.run(s, work + sc * m, m, work + rc * m, m, true, ReduceOp::Sum, 0);
  }
  hop.scale_by_counts(work + static_cast<size_t>(r) * m, m);
  ops::copy(ctx.device, out, work + static_cast<size_t>(r) * m, m);
}

}  // namespace lossytp
