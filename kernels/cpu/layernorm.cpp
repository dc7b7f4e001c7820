// LayerNorm over the last dimension, forward and backward.
// Rows are independent: OpenMP over rows. A row (C floats) sits in L1 while it is read a few
// times, so the passes over it are cheap; the variance is computed around the mean (two-pass),
// which is accurate in float.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace lossytp::cpu {

namespace {
// Rows per partial sum of dweight/dbias in the backward. Fixed (not per thread), so the
// summation order, hence the result, is the same for every thread count.
constexpr int kRowsPerChunk = 64;
}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C, float eps) {
  const float inv_c = 1.0f / static_cast<float>(C);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    float* y = out + static_cast<size_t>(n) * C;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < C; ++i) s += x[i];
    const float m = s * inv_c;
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int i = 0; i < C; ++i) {
      const float d = x[i] - m;
      v += d * d;
    }
    const float r = 1.0f / std::sqrt(v * inv_c + eps);
#pragma omp simd
    for (int i = 0; i < C; ++i) y[i] = (x[i] - m) * r * weight[i] + bias[i];
    if (mean != nullptr) mean[n] = m;
    if (rstd != nullptr) rstd[n] = r;
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C) {
  if (N <= 0 || C <= 0) return;
  const float inv_c = 1.0f / static_cast<float>(C);
  const int nchunks = (N + kRowsPerChunk - 1) / kRowsPerChunk;
  const bool need_params = dweight != nullptr || dbias != nullptr;
  // partial[chunk] = [dweight partial (C) | dbias partial (C)]
  std::vector<float> partial(need_params ? static_cast<size_t>(nchunks) * 2 * C : 0);

#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < nchunks; ++ch) {
    float* pw = need_params ? partial.data() + static_cast<size_t>(ch) * 2 * C : nullptr;
    float* pb = need_params ? pw + C : nullptr;
    if (need_params) std::fill(pw, pw + 2 * C, 0.0f);
    const int n1 = std::min(N, (ch + 1) * kRowsPerChunk);
    for (int n = ch * kRowsPerChunk; n < n1; ++n) {
      const float* x = inp + static_cast<size_t>(n) * C;
      const float* dy = dout + static_cast<size_t>(n) * C;
      const float m = mean[n], r = rstd[n];
      // sums of dnorm = dy * w and of dnorm * xhat, with xhat = (x - m) * r
      float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
      for (int i = 0; i < C; ++i) {
        const float xhat = (x[i] - m) * r;
        const float dn = dy[i] * weight[i];
        s1 += dn;
        s2 += dn * xhat;
      }
      s1 *= inv_c;
      s2 *= inv_c;
      if (dinp != nullptr) {
        float* dx = dinp + static_cast<size_t>(n) * C;
#pragma omp simd
        for (int i = 0; i < C; ++i) {
          const float xhat = (x[i] - m) * r;
          dx[i] += (dy[i] * weight[i] - s1 - xhat * s2) * r;
        }
      }
      if (need_params) {
#pragma omp simd
        for (int i = 0; i < C; ++i) {
          pw[i] += dy[i] * ((x[i] - m) * r);
          pb[i] += dy[i];
        }
      }
    }
  }
  if (!need_params) return;
  // Sum the chunks in a fixed order, parallel over columns.
#pragma omp parallel for schedule(static)
  for (int i0 = 0; i0 < C; i0 += 64) {
    const int i1 = std::min(C, i0 + 64);
    for (int ch = 0; ch < nchunks; ++ch) {
      const float* pw = partial.data() + static_cast<size_t>(ch) * 2 * C;
      const float* pb = pw + C;
      if (dweight != nullptr)
        for (int i = i0; i < i1; ++i) dweight[i] += pw[i];
      if (dbias != nullptr)
        for (int i = i0; i < i1; ++i) dbias[i] += pb[i];
    }
  }
}

}  // namespace lossytp::cpu
