// Vectorised exp for the CPU kernels (private to kernels/cpu).
#pragma once
#include <bit>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace lossytp::cpu::simd {

// exp(x) in float, Cephes-style, shared by the kernels that exponentiate a whole tensor
// (attention, cross-entropy, GELU).
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

}  // namespace lossytp::cpu::simd
