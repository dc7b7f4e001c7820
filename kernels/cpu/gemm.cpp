// sgemm: the one dense matrix product everything else is built on.
// Backend chosen by bench/gemm_eigen_vs_openblas.cpp (see docs/kernels.md): OpenBLAS's
// cblas_sgemm was faster than Eigen 3.4 for every shape of the models at 1 thread.
// Define LOSSYTP_GEMM_EIGEN to build the Eigen version instead (for comparison only).
#include "kernels/cpu/ops.h"

#include <cstddef>

#ifdef LOSSYTP_GEMM_EIGEN
#include <Eigen/Core>
#else
#include <cblas.h>
#endif

namespace lossytp::cpu {

const char* gemm_backend_name() {
#ifdef LOSSYTP_GEMM_EIGEN
  return "eigen";
#else
  return "openblas";
#endif
}

namespace {
// C = beta * C for the degenerate K == 0 product (BLAS would reject lda = 0).
void scale_c(int M, int N, float beta, float* C, int ldc) {
  for (int i = 0; i < M; ++i) {
    float* c = C + static_cast<size_t>(i) * ldc;
    if (beta == 0.0f) {
      for (int j = 0; j < N; ++j) c[j] = 0.0f;
    } else {
      for (int j = 0; j < N; ++j) c[j] *= beta;
    }
  }
}
}  // namespace

void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
#ifdef LOSSYTP_GEMM_EIGEN
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;
  Eigen::Map<Mat, 0, Eigen::OuterStride<>> c(C, M, N, Eigen::OuterStride<>(ldc));
  if (beta == 0.0f) c.setZero(); else if (beta != 1.0f) c *= beta;
  CMap a(A, trans_a ? K : M, trans_a ? M : K, Eigen::OuterStride<>(lda));
  CMap b(B, trans_b ? N : K, trans_b ? K : N, Eigen::OuterStride<>(ldb));
  if (!trans_a && !trans_b) c.noalias() += alpha * a * b;
  else if (!trans_a && trans_b) c.noalias() += alpha * a * b.transpose();
  else if (trans_a && !trans_b) c.noalias() += alpha * a.transpose() * b;
  else c.noalias() += alpha * a.transpose() * b.transpose();
#else
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

}  // namespace lossytp::cpu
