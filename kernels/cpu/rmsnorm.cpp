// RMSNorm over the last dimension (Llama), forward and backward.
// As layernorm.cpp: OpenMP over rows, a row sits in L1 for its few passes, statistics in float
// (the sum of squares needs no mean subtraction), and dweight summed over fixed chunks of rows
// in a fixed order, so the result is the same for every thread count.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace lossytp::cpu {

namespace {
// Rows per partial sum of dweight in the backward (fixed, not per thread: see above).
constexpr int kRowsPerChunk = 64;
}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C,
                     float eps) {
  const float inv_c = 1.0f / static_cast<float>(C);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;
    float* y = out + static_cast<size_t>(n) * C;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < C; ++i) ss += x[i] * x[i];
    const float r = 1.0f / std::sqrt(ss * inv_c + eps);
#pragma omp simd
    for (int i = 0; i < C; ++i) y[i] = x[i] * r * weight[i];
    if (rstd != nullptr) rstd[n] = r;
  }
}

// y = w * xhat, xhat = x r, r = (mean(x^2) + eps)^-1/2. With dn = dy * w:
//   dx = r (dn - xhat mean(dn * xhat)),   dw = sum_n dy * xhat.
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int N, int C) {
  if (N <= 0 || C <= 0) return;
  const float inv_c = 1.0f / static_cast<float>(C);
  const int nchunks = (N + kRowsPerChunk - 1) / kRowsPerChunk;
  const bool need_w = dweight != nullptr;
  std::vector<float> partial(need_w ? static_cast<size_t>(nchunks) * C : 0);

#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < nchunks; ++ch) {
    float* pw = need_w ? partial.data() + static_cast<size_t>(ch) * C : nullptr;
    if (need_w) std::fill(pw, pw + C, 0.0f);
    const int n1 = std::min(N, (ch + 1) * kRowsPerChunk);
    for (int n = ch * kRowsPerChunk; n < n1; ++n) {
      const float* x = inp + static_cast<size_t>(n) * C;
      const float* dy = dout + static_cast<size_t>(n) * C;
      const float r = rstd[n];
      if (dinp != nullptr) {
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < C; ++i) s += dy[i] * weight[i] * (x[i] * r);
        s *= inv_c;
        float* dx = dinp + static_cast<size_t>(n) * C;
#pragma omp simd
        for (int i = 0; i < C; ++i) dx[i] += (dy[i] * weight[i] - (x[i] * r) * s) * r;
      }
      if (need_w) {
#pragma omp simd
        for (int i = 0; i < C; ++i) pw[i] += dy[i] * (x[i] * r);
      }
    }
  }
  if (!need_w) return;
  // Sum the chunks in a fixed order, parallel over columns.
#pragma omp parallel for schedule(static)
  for (int i0 = 0; i0 < C; i0 += 64) {
    const int i1 = std::min(C, i0 + 64);
    for (int ch = 0; ch < nchunks; ++ch) {
      const float* pw = partial.data() + static_cast<size_t>(ch) * C;
      for (int i = i0; i < i1; ++i) dweight[i] += pw[i];
    }
  }
}

}  // namespace lossytp::cpu
