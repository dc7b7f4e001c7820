// GELU, tanh approximation (GPT-2's).
// Uses the identity 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + exp(-2u)), so
//   gelu(x) = x / (1 + exp(-2u)),  u = sqrt(2/pi) (x + 0.044715 x^3),
// which has no cancellation near u = 0 (1 - 2/(1+e^2u) would) and needs one exp, computed by
// a vectorised polynomial (~1 ulp, see exp16) instead of a scalar libm tanh call.
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd_exp.h"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // gcc 12 false positive in intrinsics
#endif

namespace lossytp::cpu {

namespace {

#if defined(__AVX512F__)
using simd::exp16;
#endif
using simd::exp_scalar;

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCoef = 0.044715f;
// exp(-2u) is evaluated at min(-2u, kArgMax): finite (no inf * 0 in the backward), and then
// already 1 + e ~ 1.6e38, so gelu(x) and its derivative are 0 to float precision.
constexpr float kArgMax = 88.0f;

}  // namespace

// Blocks of a fixed size, so that which elements take the vector or the scalar path does not
// depend on the thread count.
constexpr ptrdiff_t kBlock = 8192;

void gelu_forward(float* out, const float* inp, size_t n) {
  const ptrdiff_t len = static_cast<ptrdiff_t>(n);
#pragma omp parallel for schedule(static)
  for (ptrdiff_t i0 = 0; i0 < len; i0 += kBlock) {
    const ptrdiff_t i1 = std::min(len, i0 + kBlock);
    ptrdiff_t i = i0;
#if defined(__AVX512F__)
    const __m512 c = _mm512_set1_ps(kSqrt2OverPi), a = _mm512_set1_ps(kCoef);
    const __m512 m2 = _mm512_set1_ps(-2.0f), one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= i1; i += 16) {
      const __m512 x = _mm512_loadu_ps(inp + i);
      const __m512 u = _mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(a, x), _mm512_mul_ps(x, x), x));
      const __m512 e = exp16(_mm512_min_ps(_mm512_set1_ps(kArgMax), _mm512_mul_ps(m2, u)));
      _mm512_storeu_ps(out + i, _mm512_div_ps(x, _mm512_add_ps(one, e)));
    }
#endif
    for (; i < i1; ++i) {
      const float x = inp[i];
      const float u = kSqrt2OverPi * (x + kCoef * x * x * x);
      const float arg = -2.0f * u;
      out[i] = x / (1.0f + exp_scalar(arg > kArgMax ? kArgMax : arg));
    }
  }
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  // d/dx [x s(2u)] = s + 2 x s (1 - s) u',  s = sigmoid(2u) = 1 / (1 + e), e = exp(-2u),
  // u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2), and 1 - s = e s (no cancellation when s -> 1).
  const ptrdiff_t len = static_cast<ptrdiff_t>(n);
#pragma omp parallel for schedule(static)
  for (ptrdiff_t i0 = 0; i0 < len; i0 += kBlock) {
    const ptrdiff_t i1 = std::min(len, i0 + kBlock);
    ptrdiff_t i = i0;
#if defined(__AVX512F__)
    const __m512 c = _mm512_set1_ps(kSqrt2OverPi), a = _mm512_set1_ps(kCoef);
    const __m512 a3 = _mm512_set1_ps(3.0f * kCoef);
    const __m512 m2 = _mm512_set1_ps(-2.0f), two = _mm512_set1_ps(2.0f), one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= i1; i += 16) {
      const __m512 x = _mm512_loadu_ps(inp + i);
      const __m512 x2 = _mm512_mul_ps(x, x);
      const __m512 u = _mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(a, x), x2, x));
      const __m512 du = _mm512_mul_ps(c, _mm512_fmadd_ps(a3, x2, one));
      const __m512 e = exp16(_mm512_min_ps(_mm512_set1_ps(kArgMax), _mm512_mul_ps(m2, u)));
      const __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, e));
      // s + 2x * s * (e s) * du
      const __m512 t = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(two, x), s), _mm512_mul_ps(e, s));
      const __m512 d = _mm512_fmadd_ps(t, du, s);
      _mm512_storeu_ps(dinp + i, _mm512_mul_ps(d, _mm512_loadu_ps(dout + i)));
    }
#endif
    for (; i < i1; ++i) {
      const float x = inp[i];
      const float u = kSqrt2OverPi * (x + kCoef * x * x * x);
      const float du = kSqrt2OverPi * (1.0f + 3.0f * kCoef * x * x);
      const float arg = -2.0f * u;
      const float e = exp_scalar(arg > kArgMax ? kArgMax : arg);
      const float s = 1.0f / (1.0f + e);
      dinp[i] = (s + 2.0f * x * s * (e * s) * du) * dout[i];
    }
  }
}

}  // namespace lossytp::cpu
