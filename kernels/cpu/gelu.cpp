// GELU, tanh approximation (GPT-2's).
// Uses the identity 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + exp(-2u)), so
//   gelu(x) = x / (1 + exp(-2u)),  u = sqrt(2/pi) (x + 0.044715 x^3),
// which has no cancellation near u = 0 (1 - 2/(1+e^2u) would) and needs one exp, computed by
// a vectorisable polynomial (a few ulp, see fast_expf) instead of a scalar libm tanh call.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace lossytp::cpu {

namespace {

// exp(x) in float, Cephes-style: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r,
// 2^n by exponent bits. Error ~2 ulp for normal results; exp(x) = 0 below -87.3 (where the
// true value is subnormal); the input is clamped at 88.376 (no inf). Plain C++ so that gcc
// vectorises it in `omp simd` loops (no libm call). (Same code as in cross_entropy.cpp and
// attention.cpp: kernels/cpu has no shared private header.)
inline float fast_expf(float x) {
  x = std::min(x, 88.3762626f);  // the largest x with round(x log2 e) <= 127
  const bool underflow = x < -87.33f;
  x = std::max(x, -87.33f);
  const float t = x * 1.44269504088896341f + 12582912.0f;  // round(x log2 e) + 1.5 * 2^23
  const float n = t - 12582912.0f;
  const int32_t ni = std::bit_cast<int32_t>(t) - 0x4B400000;
  float r = x - n * 0.693359375f;  // Cody-Waite: ln2 split in a short hi part and a lo part
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const float scale = std::bit_cast<float>((ni + 127) << 23);
  return underflow ? 0.0f : p * scale;
}

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCoef = 0.044715f;

}  // namespace

void gelu_forward(float* out, const float* inp, size_t n) {
  const ptrdiff_t len = static_cast<ptrdiff_t>(n);
#pragma omp parallel for simd schedule(static)
  for (ptrdiff_t i = 0; i < len; ++i) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + kCoef * x * x * x);
    out[i] = x / (1.0f + fast_expf(-2.0f * u));
  }
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  // d/dx [x s(2u)] = s + 2 x s (1 - s) u',  s = sigmoid(2u), u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
  const ptrdiff_t len = static_cast<ptrdiff_t>(n);
#pragma omp parallel for simd schedule(static)
  for (ptrdiff_t i = 0; i < len; ++i) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + kCoef * x * x * x);
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kCoef * x * x);
    const float e = fast_expf(-2.0f * u);
    const float s = 1.0f / (1.0f + e);
    // 1 - s = e s, without the cancellation of 1 - s when s -> 1
    dinp[i] = (s + 2.0f * x * s * (e * s) * du) * dout[i];
  }
}

}  // namespace lossytp::cpu
