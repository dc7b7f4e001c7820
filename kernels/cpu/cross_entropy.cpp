// Vocab-parallel cross-entropy: the local halves of Megatron's three all-reduces.
// The logits are the biggest activation of a step ([N, V] with V up to the whole vocab), and
// every function here is one streaming pass over them: OpenMP over rows, SIMD along a row.
// The exp is a vectorised polynomial (exp16, ~1 ulp) rather than a libm call per element.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // gcc 12 false positive in intrinsics
#endif

namespace lossytp::cpu {

namespace {

// ---- exp(x) in float, Cephes-style. (The same code is in gelu.cpp, cross_entropy.cpp and
// attention.cpp: kernels/cpu has no shared private header.)
// x = n ln2 + r with |r| <= ln2/2 (ln2 split in a short high part and a low part, so n ln2 is
// exact), e^r by a degree-6 polynomial, times 2^n. Max relative error 1.2e-7 (~1 ulp) on
// [-87, 88]; +inf above ~88.7; 0 (or a subnormal) below ~-87.3; NaN gives NaN.
// exp16 does 16 at a time with AVX-512 (vscalefps for the 2^n, ~15 instructions in all);
// exp_scalar is for remainders and for builds without AVX-512.
constexpr float kExpLo = -104.0f, kExpHi = 104.0f;  // input clamp: keeps n finite
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

inline float exp_scalar(float x) {
  x = x < kExpLo ? kExpLo : x;  // written so that NaN passes through
  x = x > kExpHi ? kExpHi : x;
  const float t = x * kLog2e + 12582912.0f;  // + 1.5 * 2^23 rounds to an integer
  const float n = t - 12582912.0f;
  int32_t ni = std::bit_cast<int32_t>(t) - 0x4B400000;
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = kP0;
  p = p * r + kP1;
  p = p * r + kP2;
  p = p * r + kP3;
  p = p * r + kP4;
  p = p * r + kP5;
  p = p * (r * r) + r + 1.0f;
  ni = ni < -127 ? -127 : (ni > 128 ? 128 : ni);  // 2^-127 -> 0 (flush), 2^128 -> inf
  return p * std::bit_cast<float>((ni + 127) << 23);
}

#if defined(__AVX512F__)
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(kExpLo), x);  // max/min return the 2nd operand on NaN
  x = _mm512_min_ps(_mm512_set1_ps(kExpHi), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kP0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP5));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}
#endif

}  // namespace

void ce_local_max(float* row_max, const float* logits, int N, int V) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = logits + static_cast<size_t>(n) * V;
    // 16 explicit lanes: gcc does not vectorise a float max reduction without -ffast-math,
    // but it does turn the element-wise `a > b ? a : b` into vmaxps.
    constexpr int kLanes = 16;
    float lane[kLanes];
    for (float& l : lane) l = -std::numeric_limits<float>::infinity();
    int v = 0;
    for (; v + kLanes <= V; v += kLanes)
#pragma omp simd
      for (int i = 0; i < kLanes; ++i) lane[i] = x[v + i] > lane[i] ? x[v + i] : lane[i];
    for (; v < V; ++v) lane[0] = x[v] > lane[0] ? x[v] : lane[0];
    float m = lane[0];
    for (int i = 1; i < kLanes; ++i) m = lane[i] > m ? lane[i] : m;
    row_max[n] = m;
  }
}

void ce_local_target(float* target_logit, const float* logits, const int32_t* tgt, int N, int V,
                     int vocab_start) {
  for (int n = 0; n < N; ++n) {
    const int64_t j = static_cast<int64_t>(tgt[n]) - vocab_start;
    target_logit[n] = (tgt[n] >= 0 && j >= 0 && j < V) ? logits[static_cast<size_t>(n) * V + j] : 0.0f;
  }
}

void ce_local_exp_sum(float* sum_exp, float* logits, const float* row_max, int N, int V) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* x = logits + static_cast<size_t>(n) * V;
    const float m = row_max[n];
    // Blocks of 256 summed in float (16 SIMD lanes of 16 terms each), blocks summed in double.
    double s = 0.0;
    for (int v0 = 0; v0 < V; v0 += 256) {
      const int v1 = std::min(V, v0 + 256);
      float bs = 0.0f;
      int v = v0;
#if defined(__AVX512F__)
      const __m512 vm = _mm512_set1_ps(m);
      __m512 acc = _mm512_setzero_ps();
      for (; v + 16 <= v1; v += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + v), vm));
        _mm512_storeu_ps(x + v, e);
        acc = _mm512_add_ps(acc, e);
      }
      bs = _mm512_reduce_add_ps(acc);
#endif
      for (; v < v1; ++v) {
        const float e = exp_scalar(x[v] - m);
        x[v] = e;
        bs += e;
      }
      s += bs;
    }
    sum_exp[n] = static_cast<float>(s);
  }
}

void ce_losses(float* losses, const float* row_max, const float* sum_exp,
               const float* target_logit, int N) {
  for (int n = 0; n < N; ++n)
    losses[n] = static_cast<float>(std::log(static_cast<double>(sum_exp[n])) +
                                   static_cast<double>(row_max[n]) -
                                   static_cast<double>(target_logit[n]));
}

void ce_backward_inplace(float* logits, const float* sum_exp, const int32_t* tgt,
                         const float* dloss, int N, int V, int vocab_start) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* x = logits + static_cast<size_t>(n) * V;
    if (tgt[n] < 0) {
      std::fill(x, x + V, 0.0f);
      continue;
    }
    const float d = dloss[n];
    const float scale = d / sum_exp[n];
#pragma omp simd
    for (int v = 0; v < V; ++v) x[v] *= scale;
    const int64_t j = static_cast<int64_t>(tgt[n]) - vocab_start;
    if (j >= 0 && j < V) x[j] -= d;
  }
}

}  // namespace lossytp::cpu
