// Semigroup attention, the "generator step" of oroikono/Megatron-LM-new-attention (HEAD):
//   o = P v, P = causal softmax(q k^T / sqrt(HD) - c |i - j|), c = kappa / xi
//   y = (1 - t) v + t o
// Flash-style: one query row at a time over key tiles with an online softmax (no T x T matrix
// per head beyond a tile of TILE scores); lse saved for the backward, which recomputes P tile
// by tile. Layout: qkv [B, T, 3, NH, HD] (the fork's block-major [Q | K | V] rows of a fused
// projection, one TP rank's heads in each block); o, y: [B, T, NH, HD]; lse: [B, NH, T].
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd_exp.h"

namespace lossytp::cpu {

namespace {
constexpr int TILE = 64;
using simd::exp_scalar;
}

void semigroup_attention_forward(float* y, float* o, float* lse, const float* qkv, int B, int T,
                                 int NH, int HD, float t, float c) {
  const int C3 = 3 * NH * HD;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      float s[TILE];
      std::vector<float> acc(HD);
      for (int i = 0; i < T; ++i) {
        const float* qi = qkv + (static_cast<size_t>(b) * T + i) * C3 + h * HD;
        float m = -INFINITY, l = 0.0f;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int j0 = 0; j0 <= i; j0 += TILE) {
          const int j1 = std::min(i + 1, j0 + TILE);
          float tm = -INFINITY;
          for (int j = j0; j < j1; ++j) {
            const float* kj = qkv + (static_cast<size_t>(b) * T + j) * C3 + NH * HD + h * HD;
            float d = 0.0f;
#pragma omp simd reduction(+ : d)
            for (int e = 0; e < HD; ++e) d += qi[e] * kj[e];
            s[j - j0] = d * scale - c * static_cast<float>(i - j);
            tm = std::max(tm, s[j - j0]);
          }
          const float mn = std::max(m, tm), r = exp_scalar(m - mn);
          l *= r;
          for (int e = 0; e < HD; ++e) acc[e] *= r;
#pragma omp simd
          for (int j = j0; j < j1; ++j) s[j - j0] = exp_scalar(s[j - j0] - mn);
          for (int j = j0; j < j1; ++j) {
            const float p = s[j - j0];
            l += p;
            const float* vj = qkv + (static_cast<size_t>(b) * T + j) * C3 + 2 * NH * HD + h * HD;
#pragma omp simd
            for (int e = 0; e < HD; ++e) acc[e] += p * vj[e];
          }
          m = mn;
        }
        const size_t row = ((static_cast<size_t>(b) * T + i) * NH + h) * HD;
        const float* vi = qkv + (static_cast<size_t>(b) * T + i) * C3 + 2 * NH * HD + h * HD;
        const float inv = 1.0f / l;
        for (int e = 0; e < HD; ++e) {
          o[row + e] = acc[e] * inv;
          y[row + e] = (1.0f - t) * vi[e] + t * o[row + e];
        }
        lse[(static_cast<size_t>(b) * NH + h) * T + i] = m + std::log(l);
      }
    }
}

void semigroup_attention_backward(float* dqkv, double* dt, double* dc, const float* dy,
                                  const float* qkv, const float* o, const float* lse, int B, int T,
                                  int NH, int HD, float t, float c) {
  const int C3 = 3 * NH * HD;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  std::vector<double> part_t(static_cast<size_t>(B) * NH, 0.0), part_c(static_cast<size_t>(B) * NH, 0.0);
  // dqkv is overwritten: every (b, h) owns its q, k, v columns, so the heads run in parallel.
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      for (int i = 0; i < T; ++i) {
        float* d = dqkv + (static_cast<size_t>(b) * T + i) * C3;
        for (int e = 0; e < HD; ++e) d[h * HD + e] = d[NH * HD + h * HD + e] = d[2 * NH * HD + h * HD + e] = 0.0f;
      }
      float p[TILE];
      std::vector<float> go(HD);
      double st = 0.0, sc = 0.0;
      for (int i = 0; i < T; ++i) {
        const size_t row = ((static_cast<size_t>(b) * T + i) * NH + h) * HD;
        const float* qi = qkv + (static_cast<size_t>(b) * T + i) * C3 + h * HD;
        const float* vi = qi + 2 * NH * HD;
        float* dqi = dqkv + (static_cast<size_t>(b) * T + i) * C3 + h * HD;
        float* dvi = dqi + 2 * NH * HD;
        // y = (1 - t) v + t o: dt += dy . (o - v), dv_i += (1 - t) dy, do = t dy
        float Di = 0.0f;
        for (int e = 0; e < HD; ++e) {
          st += static_cast<double>(dy[row + e]) * (o[row + e] - vi[e]);
          dvi[e] += (1.0f - t) * dy[row + e];
          go[e] = t * dy[row + e];
          Di += go[e] * o[row + e];
        }
        const float L = lse[(static_cast<size_t>(b) * NH + h) * T + i];
        for (int j0 = 0; j0 <= i; j0 += TILE) {
          const int j1 = std::min(i + 1, j0 + TILE);
          for (int j = j0; j < j1; ++j) {
            const float* kj = qkv + (static_cast<size_t>(b) * T + j) * C3 + NH * HD + h * HD;
            float dd = 0.0f;
#pragma omp simd reduction(+ : dd)
            for (int e = 0; e < HD; ++e) dd += qi[e] * kj[e];
            p[j - j0] = dd * scale - c * static_cast<float>(i - j) - L;
          }
#pragma omp simd
          for (int j = j0; j < j1; ++j) p[j - j0] = exp_scalar(p[j - j0]);
          for (int j = j0; j < j1; ++j) {
            const float* kj = qkv + (static_cast<size_t>(b) * T + j) * C3 + NH * HD + h * HD;
            const float* vj = kj + NH * HD;
            float* dkj = dqkv + (static_cast<size_t>(b) * T + j) * C3 + NH * HD + h * HD;
            float* dvj = dkj + NH * HD;
            const float pj = p[j - j0];
            float dp = 0.0f;
#pragma omp simd reduction(+ : dp)
            for (int e = 0; e < HD; ++e) {
              dp += go[e] * vj[e];
              dvj[e] += pj * go[e];
            }
            const float ds = pj * (dp - Di);  // gradient at the logit (i, j)
            sc -= static_cast<double>(ds) * (i - j);
#pragma omp simd
            for (int e = 0; e < HD; ++e) {
              dqi[e] += ds * scale * kj[e];
              dkj[e] += ds * scale * qi[e];
            }
          }
        }
      }
      part_t[static_cast<size_t>(b) * NH + h] = st;
      part_c[static_cast<size_t>(b) * NH + h] = sc;
    }
  double st = 0.0, sc = 0.0;  // a fixed order: the same bits for any thread count
  for (size_t k = 0; k < part_t.size(); ++k) st += part_t[k], sc += part_c[k];
  *dt += st;
  *dc += sc;
}

}  // namespace lossytp::cpu
