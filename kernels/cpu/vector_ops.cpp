// Small vector helpers used by the trainer (gradient norm, scaling, accumulation).
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cstddef>
#include <vector>

namespace lossytp::cpu {

double sum_squares(const float* x, size_t n) {
  // Fixed-size chunks, each summed in double, then the chunk sums in order: the same result
  // for every thread count (an OpenMP reduction would combine in an unspecified order).
  constexpr size_t kChunk = size_t{1} << 16;
  const ptrdiff_t nchunks = static_cast<ptrdiff_t>((n + kChunk - 1) / kChunk);
  if (nchunks <= 1) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (size_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
    return s;
  }
  std::vector<double> part(static_cast<size_t>(nchunks));
#pragma omp parallel for schedule(static)
  for (ptrdiff_t c = 0; c < nchunks; ++c) {
    const size_t i0 = static_cast<size_t>(c) * kChunk, i1 = std::min(n, i0 + kChunk);
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (size_t i = i0; i < i1; ++i) s += static_cast<double>(x[i]) * x[i];
    part[static_cast<size_t>(c)] = s;
  }
  double s = 0.0;
  for (double p : part) s += p;
  return s;
}

void scale_inplace(float* x, float s, size_t n) {
  const ptrdiff_t len = static_cast<ptrdiff_t>(n);
#pragma omp parallel for simd schedule(static)
  for (ptrdiff_t i = 0; i < len; ++i) x[i] *= s;
}

void add_inplace(float* y, const float* x, size_t n) {
  const ptrdiff_t len = static_cast<ptrdiff_t>(n);
#pragma omp parallel for simd schedule(static)
  for (ptrdiff_t i = 0; i < len; ++i) y[i] += x[i];
}

}  // namespace lossytp::cpu

namespace lossytp::cpu {

void max_inplace(float* y, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = std::max(y[i], x[i]);
}

double sum(const float* x, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; ++i) s += x[i];
  return s;
}

void bias_add(float* y, const float* b, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* row = y + static_cast<size_t>(n) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) row[c] += b[c];
  }
}

void bias_grad(float* db, const float* dy, int N, int C) {
  for (int n = 0; n < N; ++n) {
    const float* row = dy + static_cast<size_t>(n) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) db[c] += row[c];
  }
}

void copy_cols(float* dst, int ldd, const float* src, int lds, int N, int w) {
  for (int n = 0; n < N; ++n)
    std::copy(src + static_cast<size_t>(n) * lds, src + static_cast<size_t>(n) * lds + w,
              dst + static_cast<size_t>(n) * ldd);
}

void scale_cols(float* x, int N, int C, int c0, float s) {
  for (int n = 0; n < N; ++n) {
    float* row = x + static_cast<size_t>(n) * C;
    for (int c = c0; c < C; ++c) row[c] *= s;
  }
}

void fill_cols(float* x, int N, int ld, int c0, int c1, float v) {
  if (c0 >= c1) return;
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* row = x + static_cast<size_t>(n) * ld;
    std::fill(row + c0, row + c1, v);
  }
}

}  // namespace lossytp::cpu
