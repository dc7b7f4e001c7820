// Vocab-parallel cross-entropy: the local halves of Megatron's three all-reduces.
// The logits are the biggest activation of a step ([N, V] with V up to the whole vocab), and
// every function here is one streaming pass over them: OpenMP over rows, SIMD along a row.
// The exp is a vectorised polynomial (exp16, ~1 ulp) rather than a libm call per element.
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd_exp.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // gcc 12 false positive in intrinsics
#endif

namespace lossytp::cpu {

namespace {

#if defined(__AVX512F__)
using simd::exp16;
#endif
using simd::exp_scalar;

}  // namespace

void ce_local_max(float* row_max, const float* logits, int N, int V) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = logits + static_cast<size_t>(n) * V;
    // 16 explicit lanes: gcc does not vectorise a float max reduction without -ffast-math,
    // but it does turn the element-wise `a > b ? a : b` into vmaxps.
    constexpr int kLanes = 16;
    float lane[kLanes];
    for (float& l : lane) l = -std::numeric_limits<float>::infinity();
    int v = 0;
    for (; v + kLanes <= V; v += kLanes)
#pragma omp simd
      for (int i = 0; i < kLanes; ++i) lane[i] = x[v + i] > lane[i] ? x[v + i] : lane[i];
    for (; v < V; ++v) lane[0] = x[v] > lane[0] ? x[v] : lane[0];
    float m = lane[0];
    for (int i = 1; i < kLanes; ++i) m = lane[i] > m ? lane[i] : m;
    row_max[n] = m;
  }
}

void ce_local_target(float* target_logit, const float* logits, const int32_t* tgt, int N, int V,
                     int vocab_start) {
  for (int n = 0; n < N; ++n) {
    const int64_t j = static_cast<int64_t>(tgt[n]) - vocab_start;
    target_logit[n] = (tgt[n] >= 0 && j >= 0 && j < V) ? logits[static_cast<size_t>(n) * V + j] : 0.0f;
  }
}

void ce_local_exp_sum(float* sum_exp, float* logits, const float* row_max, int N, int V) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* x = logits + static_cast<size_t>(n) * V;
    const float m = row_max[n];
    // Blocks of 256 summed in float (16 SIMD lanes of 16 terms each), blocks summed in double.
    double s = 0.0;
    for (int v0 = 0; v0 < V; v0 += 256) {
      const int v1 = std::min(V, v0 + 256);
      float bs = 0.0f;
      int v = v0;
#if defined(__AVX512F__)
      const __m512 vm = _mm512_set1_ps(m);
      __m512 acc = _mm512_setzero_ps();
      for (; v + 16 <= v1; v += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + v), vm));
        _mm512_storeu_ps(x + v, e);
        acc = _mm512_add_ps(acc, e);
      }
      bs = _mm512_reduce_add_ps(acc);
#endif
      for (; v < v1; ++v) {
        const float e = exp_scalar(x[v] - m);
        x[v] = e;
        bs += e;
      }
      s += bs;
    }
    sum_exp[n] = static_cast<float>(s);
  }
}

void ce_losses(float* losses, const float* row_max, const float* sum_exp,
               const float* target_logit, const int32_t* tgt, int N) {
  for (int n = 0; n < N; ++n)
    losses[n] = tgt[n] < 0 ? 0.0f
                           : static_cast<float>(std::log(static_cast<double>(sum_exp[n])) +
                                                static_cast<double>(row_max[n]) -
                                                static_cast<double>(target_logit[n]));
}

void ce_backward_inplace(float* logits, const float* sum_exp, const int32_t* tgt,
                         const float* dloss, int N, int V, int vocab_start) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* x = logits + static_cast<size_t>(n) * V;
    if (tgt[n] < 0) {
      std::fill(x, x + V, 0.0f);
      continue;
    }
    const float d = dloss[n];
    const float scale = d / sum_exp[n];
#pragma omp simd
    for (int v = 0; v < V; ++v) x[v] *= scale;
    const int64_t j = static_cast<int64_t>(tgt[n]) - vocab_start;
    if (j >= 0 && j < V) x[j] -= d;
  }
}

}  // namespace lossytp::cpu
