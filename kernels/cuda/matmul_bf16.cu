// The linear layer with bf16 GEMM operands (for --bf16: fp32 master weights and activations,
// bf16 tensor-core GEMMs), the GPU twin of kernels/cpu/matmul_bf16.cpp.
//
// Every GEMM operand (inp, weight, dout) is rounded to bf16 (kernels/bf16.h: round to nearest
// even, the CPU's exact rounding) into a cached device buffer, and multiplied by cublasGemmEx
// with bf16 A and B, fp32 C and fp32 accumulation (CUBLAS_COMPUTE_32F). Bias and dbias stay
// fp32 (dbias sums the unrounded dout). Accumulate/overwrite conventions as matmul_forward /
// matmul_backward: out and dinp are overwritten, dweight and dbias accumulate (+=, beta = 1).
//
// Scratch: three thread_local DeviceScratch buffers (rounded inp, weight, dout), grown to the
// largest operand seen by the thread and then reused: the rounding of a call is queued on the
// default stream after the GEMMs of the previous call, so reuse needs no sync.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstddef>

#include "kernels/bf16.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublas_handle.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

namespace {

// The rounded copy of src[0:n] in `scratch`.
const __nv_bfloat16* rounded(DeviceScratch& scratch, const float* src, size_t n) {
  __nv_bfloat16* dst = scratch.get<__nv_bfloat16>(n);
  round_to_bf16_copy(dst, src, n);
  return dst;
}

// out[n, :] = bias for every row (the GEMM then accumulates onto it, beta = 1, as the CPU's
// matmul_forward does).
__global__ void seed_bias_rows_k(float* out, const float* bias, int N, int OC) {
  const size_t total = static_cast<size_t>(N) * OC;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total; i += stride)
    out[i] = bias[i % OC];
}

// C[M, N] *= beta (0: set to 0), for the K == 0 product, which cuBLAS rejects.
__global__ void scale_matrix_k(float* C, int M, int N, int ldc, float beta) {
  const size_t total = static_cast<size_t>(M) * N;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    float* c = C + (i / N) * static_cast<size_t>(ldc) + i % N;
    *c = beta == 0.0f ? 0.0f : *c * beta;
  }
}

// Row-major C[M, N] = alpha op(A) op(B) + beta C with bf16 A, B and fp32 C, fp32 accumulation
// (column-major C^T = op(B)^T op(A)^T, as cuda::sgemm).
void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
               const __nv_bfloat16* A, int lda, const __nv_bfloat16* B, int ldb, float beta,
               float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (beta != 1.0f) {
      const unsigned blocks = std::min<unsigned>(blocks_for(static_cast<size_t>(M) * N), 1u << 16);
      scale_matrix_k<<<blocks, kThreads>>>(C, M, N, ldc, beta);
      check_launch("scale_matrix");
    }
    return;
  }
  check_cublas(cublasGemmEx(cublas_handle(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                            trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, CUDA_R_16BF,
                            ldb, A, CUDA_R_16BF, lda, &beta, C, CUDA_R_32F, ldc,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (bf16)");
}

thread_local DeviceScratch inp_bf16, weight_bf16, dout_bf16;

}  // namespace

void matmul_forward_bf16(float* out, const float* inp, const float* weight, const float* bias,
                         int N, int C, int OC) {
  if (N <= 0 || OC <= 0) return;
  const size_t nc = static_cast<size_t>(std::max(C, 0));  // C == 0: out = bias (or 0)
  const __nv_bfloat16* a = rounded(inp_bf16, inp, static_cast<size_t>(N) * nc);
  const __nv_bfloat16* w = rounded(weight_bf16, weight, static_cast<size_t>(OC) * nc);
  float beta = 0.0f;
  if (bias != nullptr) {
    const unsigned blocks = std::min<unsigned>(blocks_for(static_cast<size_t>(N) * OC), 1u << 16);
    seed_bias_rows_k<<<blocks, kThreads>>>(out, bias, N, OC);
    check_launch("seed_bias_rows");
    beta = 1.0f;
  }
  gemm_bf16(false, true, N, OC, C, 1.0f, a, C, w, C, beta, out, OC);
}

void matmul_backward_bf16(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, int N, int C, int OC) {
  if (N <= 0 || OC <= 0 || C < 0) {
    // nothing to add to dweight or dbias; dinp [N, C] is 0 when OC == 0
    if (dinp != nullptr && N > 0 && C > 0)
      gemm_bf16(false, false, N, C, 0, 1.0f, nullptr, 1, nullptr, C, 0.0f, dinp, C);
    return;
  }
  const size_t nc = static_cast<size_t>(C);
  const __nv_bfloat16* d = rounded(dout_bf16, dout, static_cast<size_t>(N) * OC);
  // dinp[N, C] = dout @ weight (overwrites)
  if (dinp != nullptr) {
    const __nv_bfloat16* w = rounded(weight_bf16, weight, static_cast<size_t>(OC) * nc);
    gemm_bf16(false, false, N, C, OC, 1.0f, d, OC, w, C, 0.0f, dinp, C);
  }
  // dweight[OC, C] += dout^T @ inp
  if (dweight != nullptr) {
    const __nv_bfloat16* a = rounded(inp_bf16, inp, static_cast<size_t>(N) * nc);
    gemm_bf16(true, false, OC, C, N, 1.0f, d, OC, a, C, 1.0f, dweight, C);
  }
  // dbias[OC] += column sums of the fp32 dout
  if (dbias != nullptr) bias_grad(dbias, dout, N, OC);
}

}  // namespace lossytp::cuda
