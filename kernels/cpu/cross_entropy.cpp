// Vocab-parallel cross-entropy: the local halves of Megatron's three all-reduces.
// The logits are the biggest activation of a step ([N, V] with V up to the whole vocab), and
// every function here is one streaming pass over them: OpenMP over rows, SIMD along a row.
// The exp is a vectorisable polynomial (fast_expf, ~2 ulp) rather than a libm call per element.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace lossytp::cpu {

namespace {

// exp(x) in float, Cephes-style: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r,
// 2^n by exponent bits. Error ~2 ulp for normal results; exp(x) = 0 below -87.3 (where the
// true value is subnormal); the input is clamped at 88.376 (no inf). Plain C++ so that gcc
// vectorises it in `omp simd` loops. (Same code as in gelu.cpp and attention.cpp: kernels/cpu
// has no shared private header.)
inline float fast_expf(float x) {
  x = std::min(x, 88.3762626f);  // the largest x with round(x log2 e) <= 127
  const bool underflow = x < -87.33f;
  x = std::max(x, -87.33f);
  const float t = x * 1.44269504088896341f + 12582912.0f;  // round(x log2 e) + 1.5 * 2^23
  const float n = t - 12582912.0f;
  const int32_t ni = std::bit_cast<int32_t>(t) - 0x4B400000;
  float r = x - n * 0.693359375f;  // Cody-Waite: ln2 split in a short hi part and a lo part
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const float scale = std::bit_cast<float>((ni + 127) << 23);
  return underflow ? 0.0f : p * scale;
}

}  // namespace

void ce_local_max(float* row_max, const float* logits, int N, int V) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = logits + static_cast<size_t>(n) * V;
    float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
    for (int v = 0; v < V; ++v) m = std::max(m, x[v]);
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
#pragma omp simd reduction(+ : bs)
      for (int v = v0; v < v1; ++v) {
        const float e = fast_expf(x[v] - m);
        x[v] = e;
        bs += e;
      }
      s += bs;
    }
    sum_exp[n] = static_cast<float>(s);
  }
}

void ce_losses(float* losses, const float* row_max, const float* sum_exp,
               const float* target_logit, int N) {
  for (int n = 0; n < N; ++n)
    losses[n] = static_cast<float>(std::log(static_cast<double>(sum_exp[n])) +
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
