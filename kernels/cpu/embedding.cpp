// Token embeddings (vocab-parallel) and learned positions.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace lossytp::cpu {

void embedding_forward(float* out, const int32_t* tok, const float* table, int N, int C,
                       int vocab_start, int V) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* o = out + static_cast<size_t>(n) * C;
    const int64_t row = static_cast<int64_t>(tok[n]) - vocab_start;
    if (tok[n] >= 0 && row >= 0 && row < V)
      std::memcpy(o, table + static_cast<size_t>(row) * C, sizeof(float) * C);
    else
      std::fill(o, o + C, 0.0f);
  }
}

void embedding_backward(float* dtable, const int32_t* tok, const float* dout, int N, int C,
                        int vocab_start, int V) {
  // Repeated tokens hit the same row, so rows cannot be split between threads without races.
  // Split the columns instead: each thread owns a slice of every row and walks the tokens in
  // order -- race-free, and the sums are in the same order for any thread count.
  constexpr int kCols = 64;
  const int nblk = (C + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < nblk; ++blk) {
    const int c0 = blk * kCols, c1 = std::min(C, c0 + kCols);
    for (int n = 0; n < N; ++n) {
      const int64_t row = static_cast<int64_t>(tok[n]) - vocab_start;
      if (tok[n] < 0 || row < 0 || row >= V) continue;
      float* d = dtable + static_cast<size_t>(row) * C;
      const float* g = dout + static_cast<size_t>(n) * C;
#pragma omp simd
      for (int c = c0; c < c1; ++c) d[c] += g[c];
    }
  }
}

void position_forward(float* out, const float* pos, int B, int T, int C) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      float* o = out + (static_cast<size_t>(b) * T + t) * C;
      const float* p = pos + static_cast<size_t>(t) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] += p[c];
    }
}

void position_backward(float* dpos, const float* dout, int B, int T, int C) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; ++t) {
    float* d = dpos + static_cast<size_t>(t) * C;
    for (int b = 0; b < B; ++b) {
      const float* g = dout + (static_cast<size_t>(b) * T + t) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) d[c] += g[c];
    }
  }
}

}  // namespace lossytp::cpu
