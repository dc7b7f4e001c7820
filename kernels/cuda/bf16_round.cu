// Wire precision: fp32 values rounded in place to the nearest bf16 (ties to even), with the
// same per-element function as the CPU (kernels/bf16.h), so both devices round to the same bits.
#include "kernels/bf16.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

namespace {
__global__ void bf16_round_inplace_k(float* x, size_t n) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] = bf16_round(x[i]);
}
}  // namespace

void bf16_round_inplace(float* x, size_t n) {
  if (n == 0) return;
  bf16_round_inplace_k<<<blocks_for(n), kThreads>>>(x, n);
  check_launch("bf16_round_inplace");
}

}  // namespace lossytp::cuda
