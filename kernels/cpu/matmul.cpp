// Linear layers: out = inp @ W^T + b and its backward, as sgemm calls plus a bias loop.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace lossytp::cpu {

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC) {
  if (N <= 0 || OC <= 0) return;
  float beta = 0.0f;
  if (bias != nullptr) {
    // Seed every output row with the bias and let the GEMM accumulate onto it (beta = 1):
    // cheaper than a second pass over out after the product.
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) std::memcpy(out + static_cast<size_t>(n) * OC, bias, sizeof(float) * OC);
    beta = 1.0f;
  }
  sgemm(false, true, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int C, int OC) {
  // dinp[N,C] = dout[N,OC] @ weight[OC,C]   (overwrites)
  if (dinp != nullptr) sgemm(false, false, N, C, OC, 1.0f, dout, OC, weight, C, 0.0f, dinp, C);
  // dweight[OC,C] += dout^T @ inp
  if (dweight != nullptr) sgemm(true, false, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
  if (dbias != nullptr && N > 0 && OC > 0) {
    // Column sums of dout. Each block of columns is owned by one thread and summed over the
    // rows in order, so the result does not depend on the thread count. Four independent row
    // streams keep the adds pipelined; the inner loop over columns is contiguous (SIMD).
    constexpr int kCols = 256;
    const int nblk = (OC + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; ++blk) {
      const int c0 = blk * kCols, nc = std::min(kCols, OC - c0);
      float acc[4][kCols];
      for (auto& a : acc) std::fill(a, a + nc, 0.0f);
      int n = 0;
      for (; n + 4 <= N; n += 4) {
        const float* d0 = dout + static_cast<size_t>(n) * OC + c0;
        const float* d1 = d0 + OC;
        const float* d2 = d1 + OC;
        const float* d3 = d2 + OC;
#pragma omp simd
        for (int j = 0; j < nc; ++j) {
          acc[0][j] += d0[j];
          acc[1][j] += d1[j];
          acc[2][j] += d2[j];
          acc[3][j] += d3[j];
        }
      }
      for (; n < N; ++n) {
        const float* d0 = dout + static_cast<size_t>(n) * OC + c0;
#pragma omp simd
        for (int j = 0; j < nc; ++j) acc[0][j] += d0[j];
      }
      float* db = dbias + c0;
#pragma omp simd
      for (int j = 0; j < nc; ++j) db[j] += (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
    }
  }
}

}  // namespace lossytp::cpu
