// Philox 4x32-10 counter-based random numbers (Salmon et al., SC'11).
// A draw is a pure function of (key, counter): no state, so any element of any
// stream can be computed in any order, on any rank, on CPU or GPU, with the same result.
#pragma once
#include <cstdint>
#include <cmath>

#if defined(__CUDACC__)
#define LOSSYTP_HD __host__ __device__ __forceinline__
#else
#define LOSSYTP_HD inline
#endif

namespace lossytp {

struct Philox4x32 {
  uint32_t v[4];
};

LOSSYTP_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// counter c[0..3], key k[0..1] -> four independent uniform 32-bit words.
LOSSYTP_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                    uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(M0, c0, hi0, lo0);
    philox_mulhilo(M1, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += W0; k1 += W1;
  }
  return {{c0, c1, c2, c3}};
}

// 32 random bits -> uniform float in (0, 1]: never 0, so log() is safe.
LOSSYTP_HD float philox_uniform(uint32_t x) {
  return (static_cast<float>(x >> 8) + 1.0f) * (1.0f / 16777216.0f);
}
// 32 random bits -> uniform double in [0, 1).
LOSSYTP_HD double philox_uniform_double(uint32_t hi, uint32_t lo) {
  uint64_t x = (static_cast<uint64_t>(hi) << 21) ^ (lo >> 11);
  return static_cast<double>(x & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

// 64-bit FNV-1a, used to turn names (sites, parameter names) into stream keys.
inline uint64_t fnv1a64(const char* s, uint64_t h = 1469598103934665603ull) {
  for (; *s; ++s) { h ^= static_cast<unsigned char>(*s); h *= 1099511628211ull; }
  return h;
}

// Standard normal number i of the stream (seed, stream): Box-Muller on one Philox block.
// Pure in its arguments, so a sharded matrix can draw exactly the elements it owns.
inline float philox_normal(uint64_t seed, uint64_t stream, uint64_t i) {
  Philox4x32 r = philox4x32_10(static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                               static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
                               static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  double u1 = (static_cast<double>(r.v[0]) + 1.0) * (1.0 / 4294967296.0);
  double u2 = static_cast<double>(r.v[1]) * (1.0 / 4294967296.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace lossytp
