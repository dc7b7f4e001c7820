// Randomized Hadamard transform of a message payload (--net ...,encode=hadamard; OptiReduce,
// NSDI 2025). See kernels/cpu/ops.h for the block layout and docs/netmodels.md for the theory.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "kernels/cpu/ops.h"
#include "kernels/philox.h"

namespace lossytp::cpu {

namespace {

// Orthonormal Walsh-Hadamard transform of one block of len = 2^k floats, in place: H_len / sqrt(len).
// Stages h = 1, 2, 4 are done together on groups of 8 (an unrolled 8-point transform); the
// stages h >= 8 go two at a time (radix 4: half the passes over memory) over contiguous runs of
// j that vectorise, a last odd stage alone; the scale 1/sqrt(len) rides on the last pass.
// O(len log len).
void fwht_block(float* __restrict x, size_t len) {
  if (len == 1) return;
  const float s = static_cast<float>(1.0 / std::sqrt(static_cast<double>(len)));
  if (len < 8) {
    for (size_t h = 1; h < len; h *= 2)
      for (size_t i = 0; i < len; i += 2 * h)
        for (size_t j = i; j < i + h; ++j) {
          const float u = x[j], w = x[j + h];
          x[j] = u + w;
          x[j + h] = u - w;
        }
    for (size_t i = 0; i < len; ++i) x[i] *= s;
    return;
  }
  const float s8 = len == 8 ? s : 1.0f;
#if defined(__AVX__)
  // One register per group: each stage is a lane shuffle (pairs, pairs of pairs, halves) and
  // out = shuffled + x * (+-1 pattern).
  const __m256 m1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
  const __m256 m2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
  const __m256 m4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
  const __m256 vs = _mm256_set1_ps(s8);
  for (size_t i = 0; i < len; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    v = _mm256_add_ps(_mm256_permute_ps(v, 0xB1), _mm256_mul_ps(v, m1));
    v = _mm256_add_ps(_mm256_permute_ps(v, 0x4E), _mm256_mul_ps(v, m2));
    v = _mm256_add_ps(_mm256_permute2f128_ps(v, v, 1), _mm256_mul_ps(v, m4));
    _mm256_storeu_ps(x + i, _mm256_mul_ps(v, vs));
  }
#else
  for (size_t i = 0; i < len; i += 8) {
    float* v = x + i;
    const float a0 = v[0] + v[1], a1 = v[0] - v[1], a2 = v[2] + v[3], a3 = v[2] - v[3];
    const float a4 = v[4] + v[5], a5 = v[4] - v[5], a6 = v[6] + v[7], a7 = v[6] - v[7];
    const float b0 = a0 + a2, b2 = a0 - a2, b1 = a1 + a3, b3 = a1 - a3;
    const float b4 = a4 + a6, b6 = a4 - a6, b5 = a5 + a7, b7 = a5 - a7;
    v[0] = (b0 + b4) * s8; v[4] = (b0 - b4) * s8; v[1] = (b1 + b5) * s8; v[5] = (b1 - b5) * s8;
    v[2] = (b2 + b6) * s8; v[6] = (b2 - b6) * s8; v[3] = (b3 + b7) * s8; v[7] = (b3 - b7) * s8;
  }
#endif
  size_t h = 8;
  for (; 4 * h <= len; h *= 4) {
    const float sc = 4 * h == len ? s : 1.0f;
    for (size_t i = 0; i < len; i += 4 * h) {
      float* __restrict p0 = x + i;
      float* __restrict p1 = p0 + h;
      float* __restrict p2 = p1 + h;
      float* __restrict p3 = p2 + h;
      for (size_t j = 0; j < h; ++j) {
        const float a = p0[j] + p1[j], b = p0[j] - p1[j], c = p2[j] + p3[j], d = p2[j] - p3[j];
        p0[j] = (a + c) * sc;
        p2[j] = (a - c) * sc;
        p1[j] = (b + d) * sc;
        p3[j] = (b - d) * sc;
      }
    }
  }
  if (h < len) {  // one stage left (h = len / 2)
    float* __restrict p0 = x;
    float* __restrict p1 = x + h;
    for (size_t j = 0; j < h; ++j) {
      const float a = p0[j], b = p1[j];
      p0[j] = (a + b) * s;
      p1[j] = (a - b) * s;
    }
  }
}

}  // namespace

size_t hadamard_next_block(size_t remaining, size_t block) {
  if (remaining >= block) return block;
  size_t len = 1;
  while (len * 2 <= remaining) len *= 2;
  return len;
}

void hadamard_transform(float* x, size_t n, size_t block) {
  if (block == 0 || (block & (block - 1)) != 0)
    throw std::invalid_argument("hadamard_transform: block " + std::to_string(block) + " is not a power of two");
  for (size_t a = 0; a < n;) {
    const size_t len = hadamard_next_block(n - a, block);
    fwht_block(x + a, len);
    a += len;
  }
}

// Sign of element i: bit i % 32 of word (i / 32) % 4 of the Philox block i / 128 under `key`
// (counter: block index, a constant that separates this use from every other Philox stream).
// Flips x[a, a + len) (global indices: the signs do not depend on how the range is cut).
static void signs_range(float* x, size_t a, size_t len, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kTag = 0x48414441u;  // "HADA"
  const size_t end = a + len;
  for (size_t base = a / 128 * 128; base < end; base += 128) {
    const uint64_t blk = base / 128;
    const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(blk), static_cast<uint32_t>(blk >> 32), kTag, 0, k0, k1);
    const size_t lo = base < a ? a - base : 0, hi = end - base < 128 ? end - base : 128;
    if (lo == 0 && hi == 128) {
      // flip the IEEE sign bit: exact and branch-free; a fixed trip count of 128 vectorises
      uint32_t bits[128];
      std::memcpy(bits, x + base, sizeof bits);
      for (size_t i = 0; i < 128; ++i) bits[i] ^= ((r.v[i >> 5] >> (i & 31)) & 1u) << 31;
      std::memcpy(x + base, bits, sizeof bits);
    } else {
      for (size_t i = lo; i < hi; ++i) {
        uint32_t bits;
        std::memcpy(&bits, x + base + i, 4);
        bits ^= ((r.v[i >> 5] >> (i & 31)) & 1u) << 31;
        std::memcpy(x + base + i, &bits, 4);
      }
    }
  }
}

void hadamard_signs(float* x, size_t n, uint64_t key) {
  signs_range(x, 0, n, static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
}

// Block by block, the signs next to the transform while the block is in cache.
void hadamard_encode(float* x, size_t n, size_t block, uint64_t key) {
  if (block == 0 || (block & (block - 1)) != 0)
    throw std::invalid_argument("hadamard_encode: block " + std::to_string(block) + " is not a power of two");
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (size_t a = 0; a < n;) {
    const size_t len = hadamard_next_block(n - a, block);
    signs_range(x, a, len, k0, k1);
    fwht_block(x + a, len);
    a += len;
  }
}

void hadamard_decode(float* x, size_t n, size_t block, uint64_t key) {
  if (block == 0 || (block & (block - 1)) != 0)
    throw std::invalid_argument("hadamard_decode: block " + std::to_string(block) + " is not a power of two");
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (size_t a = 0; a < n;) {
    const size_t len = hadamard_next_block(n - a, block);
    fwht_block(x + a, len);  // H / sqrt(len) is symmetric and orthogonal: its own inverse
    signs_range(x, a, len, k0, k1);  // D^-1 = D
    a += len;
  }
}

}  // namespace lossytp::cpu
