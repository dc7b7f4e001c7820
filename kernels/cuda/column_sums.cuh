// Deterministic column sums on the GPU: out_k[c] += sum_n f(n, c)[k] for k < K over an [N, C]
// row-major expression (LayerNorm's and RMSNorm's weight gradients, bias gradients).
// Pass 1: a block of 32 columns x 16 row lanes sums one chunk of rows and writes one partial per
// (chunk, column); pass 2 adds a column's partials in chunk order. Every addition has a fixed
// order, so results are bit-for-bit repeatable. The grid is (C / 32) x (N / chunk) blocks: the
// first H200 run (2026-11-30) showed one block per 32 columns (C = 768: 24 blocks on 132
// multiprocessors) costing 42 % of a gpt2-124m step in LayerNorm's backward alone.
// Include from .cu files only.
#pragma once
#include <array>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublas_handle.cuh"

namespace lossytp::cuda {

constexpr int kColSumCols = 32, kColSumLanes = 16, kColSumChunk = 256;

template <int K>
struct ColumnOutputs {
  float* p[K];
};

template <int K, class F>
__global__ void column_partials_k(float* part, int N, int C, int chunk, F f) {
  __shared__ float s[K][kColSumLanes][kColSumCols];
  const int c = blockIdx.x * kColSumCols + threadIdx.x;
  const int n0 = blockIdx.y * chunk, n1 = min(N, n0 + chunk);
  float acc[K];
  for (int k = 0; k < K; ++k) acc[k] = 0.0f;
  if (c < C)
    for (int n = n0 + threadIdx.y; n < n1; n += kColSumLanes) {
      float v[K];
      f(n, c, v);
      for (int k = 0; k < K; ++k) acc[k] += v[k];
    }
  for (int k = 0; k < K; ++k) s[k][threadIdx.y][threadIdx.x] = acc[k];
  __syncthreads();
  if (threadIdx.y == 0 && c < C)
    for (int k = 0; k < K; ++k) {
      float t = 0.0f;
      for (int r = 0; r < kColSumLanes; ++r) t += s[k][r][threadIdx.x];
      part[(static_cast<size_t>(k) * gridDim.y + blockIdx.y) * C + c] = t;
    }
}

template <int K>
__global__ void column_finish_k(ColumnOutputs<K> out, const float* part, int chunks, int C) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= K * C) return;
  const int k = i / C, c = i % C;
  float t = 0.0f;
  for (int j = 0; j < chunks; ++j) t += part[(static_cast<size_t>(k) * chunks + j) * C + c];
  if (out.p[k]) out.p[k][c] += t;
}

// out[k] may be null (that sum is computed and dropped). F: a device functor
// `void operator()(int n, int c, float (&v)[K]) const`.
template <int K, class F>
void column_sums(ColumnOutputs<K> out, int N, int C, F f, const char* what) {
  if (N <= 0 || C <= 0) return;
  int chunk = kColSumChunk;
  while ((N + chunk - 1) / chunk > 65535) chunk *= 2;  // grid.y limit
  const int chunks = (N + chunk - 1) / chunk;
  thread_local DeviceScratch scratch;
  float* part = scratch.get<float>(static_cast<size_t>(K) * chunks * C);
  column_partials_k<K><<<dim3((C + kColSumCols - 1) / kColSumCols, chunks), dim3(kColSumCols, kColSumLanes)>>>(
      part, N, C, chunk, f);
  check_launch(what);
  column_finish_k<K><<<blocks_for(static_cast<size_t>(K) * C), kThreads>>>(out, part, chunks, C);
  check_launch(what);
}

}  // namespace lossytp::cuda
