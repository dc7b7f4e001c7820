// SwiGLU (Megatron's glu with silu): inp rows [gate (F) | up (F)], out = silu(gate) * up.
// silu(g) = g s, s = sigmoid(g) = 1 / (1 + e), e = exp(-g); silu'(g) = s (1 + g (1 - s)) with
// 1 - s = e s (no cancellation as s -> 1). exp by simd_exp.h's polynomial (~1 ulp), 16 lanes at
// a time with AVX-512, its argument clamped at 88 as in gelu.cpp: 1 + e stays finite (no inf * 0
// in the backward) and silu(g), silu'(g) are then 0 to float precision. OpenMP over rows; which
// elements take the vector or the scalar path depends on F only, not on the thread count.
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd_exp.h"

#include <cstddef>

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
constexpr float kArgMax = 88.0f;
}  // namespace

void swiglu_forward(float* out, const float* inp, int N, int F) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* g = inp + static_cast<size_t>(n) * 2 * F;
    const float* u = g + F;
    float* y = out + static_cast<size_t>(n) * F;
    int i = 0;
#if defined(__AVX512F__)
    const __m512 one = _mm512_set1_ps(1.0f), amax = _mm512_set1_ps(kArgMax);
    for (; i + 16 <= F; i += 16) {
      const __m512 x = _mm512_loadu_ps(g + i);
      const __m512 e = exp16(_mm512_min_ps(amax, _mm512_sub_ps(_mm512_setzero_ps(), x)));
      const __m512 silu = _mm512_div_ps(x, _mm512_add_ps(one, e));
      _mm512_storeu_ps(y + i, _mm512_mul_ps(silu, _mm512_loadu_ps(u + i)));
    }
#endif
    for (; i < F; ++i) {
      const float x = g[i], arg = -x;
      y[i] = x / (1.0f + exp_scalar(arg > kArgMax ? kArgMax : arg)) * u[i];
    }
  }
}

void swiglu_backward(float* dinp, const float* inp, const float* dout, int N, int F) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* g = inp + static_cast<size_t>(n) * 2 * F;
    const float* u = g + F;
    const float* dy = dout + static_cast<size_t>(n) * F;
    float* dg = dinp + static_cast<size_t>(n) * 2 * F;
    float* du = dg + F;
    int i = 0;
#if defined(__AVX512F__)
    const __m512 one = _mm512_set1_ps(1.0f), amax = _mm512_set1_ps(kArgMax);
    for (; i + 16 <= F; i += 16) {
      const __m512 x = _mm512_loadu_ps(g + i);
      const __m512 e = exp16(_mm512_min_ps(amax, _mm512_sub_ps(_mm512_setzero_ps(), x)));
      const __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, e));
      // silu' = s (1 + x e s)
      const __m512 d = _mm512_mul_ps(s, _mm512_fmadd_ps(x, _mm512_mul_ps(e, s), one));
      const __m512 dyv = _mm512_loadu_ps(dy + i);
      _mm512_storeu_ps(dg + i, _mm512_mul_ps(_mm512_mul_ps(dyv, _mm512_loadu_ps(u + i)), d));
      _mm512_storeu_ps(du + i, _mm512_mul_ps(dyv, _mm512_mul_ps(x, s)));
    }
#endif
    for (; i < F; ++i) {
      const float x = g[i], arg = -x;
      const float e = exp_scalar(arg > kArgMax ? kArgMax : arg);
      const float s = 1.0f / (1.0f + e);
      dg[i] = dy[i] * u[i] * (s * (1.0f + x * (e * s)));
      du[i] = dy[i] * (x * s);
    }
  }
}

}  // namespace lossytp::cpu
