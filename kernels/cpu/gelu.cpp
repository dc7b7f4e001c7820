// GELU, tanh approximation (GPT-2's).
// Uses the identity 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + exp(-2u)), so
//   gelu(x) = x / (1 + exp(-2u)),  u = sqrt(2/pi) (x + 0.044715 x^3),
// which has no cancellation near u = 0 (1 - 2/(1+e^2u) would) and needs one exp, computed by
// a vectorised polynomial (~1 ulp, see exp16) instead of a scalar libm tanh call.
#include "kernels/cpu/ops.h"

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
