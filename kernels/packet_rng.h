// Per-packet randomness of the network models: small inline functions on plain integers, usable
// from host code and (with nvcc) from CUDA kernels, so a mask drawn on the GPU is bit-identical
// to the CPU's.
//
// Scheme. One Philox 4x32-10 call yields four 32-bit words, used for four consecutive packets:
//   key     = 64-bit mix of (seed, hash("<group>.<site>"), src, dst, hop, model index,
//             high halves of iteration and call)
//   counter = (packet / 4 [low 32 bits], call [low 32], iteration [low 32],
//              attempt | lane << 16 | (packet / 4) >> 32 << 20)
// A "lane" separates the uses of one model (GE: lane 0 = chain transitions, lane 1 = loss draws).
// A probability q becomes an integer threshold t = round(q * 2^32); an event happens when the
// word is below t (t = 2^32: always, t = 0: never).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/philox.h"

namespace lossytp::net {

// splitmix64's finaliser: a bijective, well-mixing 64 -> 64 bit hash.
LOSSYTP_HD uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The stream of one message under one model (everything but the packet index).
struct PacketStream {
  uint32_t k0 = 0, k1 = 0;  // Philox key
  uint32_t call_lo = 0, iter_lo = 0, attempt = 0;
};

LOSSYTP_HD PacketStream packet_stream(uint64_t seed, uint64_t site_hash, int32_t src, int32_t dst,
                                      int32_t hop, uint32_t model_index, int64_t iteration,
                                      int64_t call, uint32_t attempt) {
  uint64_t h = mix64(seed);
  h = mix64(h ^ site_hash);
  h = mix64(h ^ ((static_cast<uint64_t>(static_cast<uint32_t>(src)) << 32) |
                 static_cast<uint32_t>(dst)));
  h = mix64(h ^ ((static_cast<uint64_t>(model_index) << 32) | static_cast<uint32_t>(hop)));
  const uint64_t hi = (static_cast<uint64_t>(iteration) >> 32) |
                      ((static_cast<uint64_t>(call) >> 32) << 32);  // 0 in any real run
  if (hi) h = mix64(h ^ hi);
  PacketStream s;
  s.k0 = static_cast<uint32_t>(h);
  s.k1 = static_cast<uint32_t>(h >> 32);
  s.call_lo = static_cast<uint32_t>(call);
  s.iter_lo = static_cast<uint32_t>(iteration);
  s.attempt = attempt;
  return s;
}

// The four words of packets 4*block .. 4*block+3 in `lane`.
LOSSYTP_HD Philox4x32 packet_block(const PacketStream& s, uint64_t block, uint32_t lane) {
  const uint32_t c3 = (s.attempt & 0xFFFFu) | ((lane & 0xFu) << 16) |
                      (static_cast<uint32_t>(block >> 32) << 20);
  return philox4x32_10(static_cast<uint32_t>(block), s.call_lo, s.iter_lo, c3, s.k0, s.k1);
}

// The word of one packet (GPU-style access: one thread per packet).
LOSSYTP_HD uint32_t packet_word(const PacketStream& s, uint64_t packet, uint32_t lane) {
  return packet_block(s, packet >> 2, lane).v[packet & 3];
}

// Probability -> threshold on a 32-bit word (q clamped to [0, 1]).
LOSSYTP_HD uint64_t prob_threshold(double q) {
  if (!(q > 0.0)) return 0;
  if (q >= 1.0) return 1ull << 32;
  return static_cast<uint64_t>(q * 4294967296.0 + 0.5);
}

// i.i.d. loss with threshold t: lost[i] |= 1 with probability t / 2^32, packets [0, n).
LOSSYTP_HD bool iid_packet_lost(const PacketStream& s, uint32_t lane, uint64_t t, uint64_t packet) {
  return packet_word(s, packet, lane) < t;
}

inline void iid_loss(const PacketStream& s, uint32_t lane, uint64_t t, size_t n, uint8_t* lost) {
  if (t == 0 || n == 0) return;
  if (t >= (1ull << 32)) {
    std::memset(lost, 1, n);
    return;
  }
  const uint32_t t32 = static_cast<uint32_t>(t);
  const size_t blocks = n / 4;
  size_t b = 0;
  if (blocks >= 32) {  // long messages: one loop the compiler vectorises (16 blocks a turn)
    for (; b < blocks; ++b) {
      const Philox4x32 r = packet_block(s, b, lane);
      uint8_t* o = lost + 4 * b;
      o[0] |= static_cast<uint8_t>(r.v[0] < t32);
      o[1] |= static_cast<uint8_t>(r.v[1] < t32);
      o[2] |= static_cast<uint8_t>(r.v[2] < t32);
      o[3] |= static_cast<uint8_t>(r.v[3] < t32);
    }
  }
  // short ones: 16 blocks (64 packets) a turn, a constant trip count vectorised whole
  for (; b + 16 <= blocks; b += 16) {
    uint32_t w[64];
    for (size_t j = 0; j < 16; ++j) {
      const Philox4x32 r = packet_block(s, b + j, lane);
      w[4 * j + 0] = r.v[0];
      w[4 * j + 1] = r.v[1];
      w[4 * j + 2] = r.v[2];
      w[4 * j + 3] = r.v[3];
    }
    uint8_t* o = lost + 4 * b;
    for (size_t i = 0; i < 64; ++i) o[i] |= static_cast<uint8_t>(w[i] < t32);
  }
  for (; b < blocks; ++b) {
    const Philox4x32 r = packet_block(s, b, lane);
    uint8_t* o = lost + 4 * b;
    o[0] |= static_cast<uint8_t>(r.v[0] < t32);
    o[1] |= static_cast<uint8_t>(r.v[1] < t32);
    o[2] |= static_cast<uint8_t>(r.v[2] < t32);
    o[3] |= static_cast<uint8_t>(r.v[3] < t32);
  }
  if (n % 4) {
    const Philox4x32 r = packet_block(s, blocks, lane);
    for (size_t j = 0; j < n % 4; ++j) lost[4 * blocks + j] |= static_cast<uint8_t>(r.v[j] < t32);
  }
}

// Two-state chain (0 = good, 1 = bad) step on word w: good -> bad when w < t_gb, bad -> good
// when w < t_bg.
LOSSYTP_HD int chain_step(int state, uint32_t w, uint64_t t_gb, uint64_t t_bg) {
  return state ? (w < t_bg ? 0 : 1) : (w < t_gb ? 1 : 0);
}

// The words of packets 4*b0 .. 4*(b0+blocks)-1 in `lane` (a loop the compiler vectorises).
inline void packet_words(const PacketStream& s, uint64_t b0, size_t blocks, uint32_t lane, uint32_t* w) {
  for (size_t b = 0; b < blocks; ++b) {
    const Philox4x32 r = packet_block(s, b0 + b, lane);
    w[4 * b + 0] = r.v[0];
    w[4 * b + 1] = r.v[1];
    w[4 * b + 2] = r.v[2];
    w[4 * b + 3] = r.v[3];
  }
}

// Gilbert-Elliott with the chain moving once per packet: packet 0's state is drawn from the
// stationary distribution (bad when its lane-0 word is below t_pi), packet i > 0 moves the chain
// with its lane-0 word (chain_step); a packet in state s is lost when its lane-1 word is below
// t_loss[s] (no lane-1 draw when both thresholds are 0 or 2^32: the loss is the state's).
// start = 0 or 1 (state=link): the chain's state before the message; packet 0 then moves it with
// its lane-0 word as every other packet does. Returns the state of the last packet (start when
// n = 0).
//
// Reference version, one packet after the other (what a GPU thread would run per message):
LOSSYTP_HD int ge_packet_loss_reference(const PacketStream& s, uint64_t t_pi, uint64_t t_gb,
                                        uint64_t t_bg, const uint64_t t_loss[2], size_t n,
                                        uint8_t* lost, int start = -1) {
  const bool draw = !((t_loss[0] == 0 || t_loss[0] == (1ull << 32)) &&
                      (t_loss[1] == 0 || t_loss[1] == (1ull << 32)));
  int state = start;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t w = packet_word(s, i, 0);
    state = state < 0 ? (w < t_pi ? 1 : 0) : chain_step(state, w, t_gb, t_bg);
    const bool l = draw ? packet_word(s, i, 1) < t_loss[state] : t_loss[state] != 0;
    lost[i] |= static_cast<uint8_t>(l);
  }
  return state;
}

// The same, fast on a CPU: the words of a chunk are drawn in a vectorised loop and turned into
// 2-bit tables (bit s = the next state from s / the loss in s), then the chain runs over them.
inline int ge_packet_loss(const PacketStream& s, uint64_t t_pi, uint64_t t_gb, uint64_t t_bg,
                          const uint64_t t_loss[2], size_t n, uint8_t* lost, int start = -1) {
  if (n == 0) return start;
  const bool draw = !((t_loss[0] == 0 || t_loss[0] == (1ull << 32)) &&
                      (t_loss[1] == 0 || t_loss[1] == (1ull << 32)));
  const uint8_t fixed = static_cast<uint8_t>((t_loss[0] != 0) | ((t_loss[1] != 0) << 1));
  constexpr size_t kChunk = 256;
  uint32_t w0[kChunk], w1[kChunk];
  uint8_t next[kChunk], loss[kChunk];
  int state = 0;
  for (size_t base = 0; base < n; base += kChunk) {
    const size_t m = n - base < kChunk ? n - base : kChunk;
    const size_t blocks = (m + 3) / 4;
    packet_words(s, base / 4, blocks, 0, w0);
    for (size_t j = 0; j < 4 * blocks; ++j)
      next[j] = static_cast<uint8_t>((w0[j] < t_gb) | ((w0[j] >= t_bg) << 1));
    if (draw) {
      packet_words(s, base / 4, blocks, 1, w1);
      for (size_t j = 0; j < 4 * blocks; ++j)
        loss[j] = static_cast<uint8_t>((w1[j] < t_loss[0]) | ((w1[j] < t_loss[1]) << 1));
    }
    size_t j = 0;
    if (base == 0) {
      state = start < 0 ? (w0[0] < t_pi ? 1 : 0) : (next[0] >> start) & 1;
      lost[0] |= static_cast<uint8_t>(((draw ? loss[0] : fixed) >> state) & 1);
      j = 1;
    }
    uint8_t* o = lost + base;
    if (draw) {
      for (; j < m; ++j) {
        state = (next[j] >> state) & 1;
        o[j] |= static_cast<uint8_t>((loss[j] >> state) & 1);
      }
    } else {
      for (; j < m; ++j) {
        state = (next[j] >> state) & 1;
        o[j] |= static_cast<uint8_t>((fixed >> state) & 1);
      }
    }
  }
  return state;
}

}  // namespace lossytp::net
