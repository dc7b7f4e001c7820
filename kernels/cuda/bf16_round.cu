// fp32 values rounded to the nearest bf16 (ties to even) with the same per-element function as
// the CPU (kernels/bf16.h), so both devices round to the same bits: in place (wire precision) and
// into a bf16 copy (the GEMM operands of --bf16).
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/bf16.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

namespace {
__global__ void bf16_round_inplace_k(float* x, size_t n) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] = bf16_round(x[i]);
}

// dst[i] = bf16(src[i]), grid-stride; 8 elements (two 16-byte loads, one 16-byte store) a step
// when both pointers are 16-byte aligned: the copies of --bf16 move ~30 GB a gpt2-124m step.
__global__ void round_copy_vec8_k(uint4* dst, const float4* src, size_t n8) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n8; i += stride) {
    const float4 a = src[2 * i], b = src[2 * i + 1];
    uint4 o;
    o.x = bf16_bits(a.x) | (static_cast<uint32_t>(bf16_bits(a.y)) << 16);
    o.y = bf16_bits(a.z) | (static_cast<uint32_t>(bf16_bits(a.w)) << 16);
    o.z = bf16_bits(b.x) | (static_cast<uint32_t>(bf16_bits(b.y)) << 16);
    o.w = bf16_bits(b.z) | (static_cast<uint32_t>(bf16_bits(b.w)) << 16);
    dst[i] = o;
  }
}
__global__ void round_copy_k(__nv_bfloat16* dst, const float* src, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    dst[i] = __ushort_as_bfloat16(bf16_bits(src[i]));
}
}  // namespace

void round_to_bf16_copy(__nv_bfloat16* dst, const float* src, size_t n) {
  if (n == 0) return;
  size_t done = 0;
  if (reinterpret_cast<uintptr_t>(dst) % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 && n >= 8) {
    const size_t n8 = n / 8;
    round_copy_vec8_k<<<std::min<unsigned>(blocks_for(n8), 1u << 16), kThreads>>>(
        reinterpret_cast<uint4*>(dst), reinterpret_cast<const float4*>(src), n8);
    check_launch("round_to_bf16");
    done = n8 * 8;
  }
  if (done < n) {
    round_copy_k<<<std::min<unsigned>(blocks_for(n - done), 1u << 16), kThreads>>>(dst + done, src + done, n - done);
    check_launch("round_to_bf16");
  }
}

void bf16_round_inplace(float* x, size_t n) {
  if (n == 0) return;
  bf16_round_inplace_k<<<blocks_for(n), kThreads>>>(x, n);
  check_launch("bf16_round_inplace");
}

}  // namespace lossytp::cuda
