// GEMM through cuBLAS (column-major: a row-major C = op(A) op(B) is the column-major
// C^T = op(B)^T op(A)^T), and the linear layer's forward and backward on top of it.
#include <cublas_v2.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublas_handle.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

cublasHandle_t cublas_handle() {
  static thread_local cublasHandle_t h = [] {
    cublasHandle_t x = nullptr;
    if (cublasCreate(&x) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate failed");
    // fp32 exactly as asked (no TF32), so results can be compared with the CPU
    cublasSetMathMode(x, CUBLAS_DEFAULT_MATH);
    return x;
  }();
  return h;
}

void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  const cublasStatus_t st =
      cublasSgemm(cublas_handle(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                  N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc);
  if (st != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasSgemm failed (status " + std::to_string(st) + ")");
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC) {
  sgemm(false, true, N, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC);
  if (bias) bias_add(out, bias, N, OC);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int C, int OC) {
  if (dinp) sgemm(false, false, N, C, OC, 1.0f, dout, OC, weight, C, 0.0f, dinp, C);
  sgemm(true, false, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
  if (dbias) bias_grad(dbias, dout, N, OC);
}

}  // namespace lossytp::cuda
