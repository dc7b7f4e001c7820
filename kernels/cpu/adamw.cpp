// AdamW (decoupled weight decay, bias-corrected), one streaming pass over param/grad/m/v.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

#if defined(__AVX512F__)
#include <immintrin.h>
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // gcc 12 false positive in intrinsics
#endif

namespace lossytp::cpu {

void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t t) {
  // Bias corrections once, in double: 1 - beta^t loses digits in float for beta2 ~ 0.999.
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t));
  const float inv_bc1 = static_cast<float>(1.0 / bc1);
  const float inv_bc2 = static_cast<float>(1.0 / bc2);
  const float omb1 = 1.0f - beta1, omb2 = 1.0f - beta2;
  // p <- p - lr (mhat / (sqrt(vhat) + eps) + wd p), the weight decay using the old p (same as
  // PyTorch's AdamW, which first scales p by 1 - lr wd).
  auto scalar = [&](size_t i) {
    const float g = grad[i];
    const float mi = beta1 * m[i] + omb1 * g;
    const float vi = beta2 * v[i] + omb2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi * inv_bc1, vhat = vi * inv_bc2;
    param[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + weight_decay * param[i]);
  };
  // Fixed blocks, so the split between the vector and the scalar code does not depend on the
  // thread count. (The vector loop is written with intrinsics because gcc will not vectorise
  // std::sqrt without -fno-math-errno.)
  constexpr size_t kBlock = 4096;
  const ptrdiff_t nblk = static_cast<ptrdiff_t>((n + kBlock - 1) / kBlock);
#pragma omp parallel for schedule(static)
  for (ptrdiff_t blk = 0; blk < nblk; ++blk) {
    const size_t i0 = static_cast<size_t>(blk) * kBlock, i1 = std::min(n, i0 + kBlock);
    size_t i = i0;
#if defined(__AVX512F__)
    const __m512 b1 = _mm512_set1_ps(beta1), b2 = _mm512_set1_ps(beta2);
    const __m512 c1 = _mm512_set1_ps(omb1), c2 = _mm512_set1_ps(omb2);
    const __m512 ib1 = _mm512_set1_ps(inv_bc1), ib2 = _mm512_set1_ps(inv_bc2);
    const __m512 vlr = _mm512_set1_ps(lr), veps = _mm512_set1_ps(eps);
    const __m512 vwd = _mm512_set1_ps(weight_decay);
    for (; i + 16 <= i1; i += 16) {
      const __m512 g = _mm512_loadu_ps(grad + i);
      const __m512 mi = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(c1, g));
      const __m512 vi = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_loadu_ps(v + i)),
                                      _mm512_mul_ps(_mm512_mul_ps(c2, g), g));
      _mm512_storeu_ps(m + i, mi);
      _mm512_storeu_ps(v + i, vi);
      const __m512 mhat = _mm512_mul_ps(mi, ib1), vhat = _mm512_mul_ps(vi, ib2);
      const __m512 p = _mm512_loadu_ps(param + i);
      const __m512 upd = _mm512_add_ps(_mm512_div_ps(mhat, _mm512_add_ps(_mm512_sqrt_ps(vhat), veps)),
                                       _mm512_mul_ps(vwd, p));
      _mm512_storeu_ps(param + i, _mm512_sub_ps(p, _mm512_mul_ps(vlr, upd)));
    }
#endif
    for (; i < i1; ++i) scalar(i);
  }
}

}  // namespace lossytp::cpu
