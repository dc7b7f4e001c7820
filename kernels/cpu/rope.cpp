// Rotary position embedding (rotate-half convention, Megatron / Hugging Face), in place on the
// fused, grouped qkv activation: per token [NKV groups][NH/NKV q heads, k, v][HD].
// The backward is the same rotation with sin negated (a rotation's transpose is its inverse);
// negating is exact, so one routine serves both. OpenMP over tokens; the inner loop over the
// rot_dim/2 pairs of a head is a plain vectorisable loop (x[i] and x[i+h] never overlap).
#include "kernels/cpu/ops.h"

#include <cstddef>
#include <stdexcept>
#include <string>

namespace lossytp::cpu {

namespace {

void check_rope_args(int NH, int NKV, int HD, int rot_dim) {
  if (NKV <= 0 || NH <= 0 || NH % NKV != 0 || rot_dim < 0 || rot_dim % 2 != 0 || rot_dim > HD)
    throw std::invalid_argument("rope: need NH % NKV == 0 and an even rot_dim <= HD (NH=" +
                                std::to_string(NH) + " NKV=" + std::to_string(NKV) +
                                " HD=" + std::to_string(HD) + " rot_dim=" + std::to_string(rot_dim) + ")");
}

// sign = +1: the forward rotation; -1: its transpose.
void rope_apply(float* qkv, const float* cos, const float* sin, int B, int T, int NH, int NKV,
                int HD, int rot_dim, float sign) {
  check_rope_args(NH, NKV, HD, rot_dim);
  const int h = rot_dim / 2;
  if (B <= 0 || T <= 0 || h == 0) return;
  const int qpg = NH / NKV;                                   // q heads per group
  const size_t group = static_cast<size_t>(qpg + 2) * HD;     // floats per group
  const size_t token = group * NKV;                           // floats per token
  const ptrdiff_t ntok = static_cast<ptrdiff_t>(B) * T;
#pragma omp parallel for schedule(static)
  for (ptrdiff_t bt = 0; bt < ntok; ++bt) {
    const int t = static_cast<int>(bt % T);
    const float* c = cos + static_cast<size_t>(t) * h;
    const float* s = sin + static_cast<size_t>(t) * h;
    float* tok = qkv + static_cast<size_t>(bt) * token;
    for (int g = 0; g < NKV; ++g)
      for (int j = 0; j <= qpg; ++j) {  // qpg q heads, then the group's k head
        float* x1 = tok + g * group + static_cast<size_t>(j) * HD;
        float* x2 = x1 + h;
#pragma omp simd
        for (int i = 0; i < h; ++i) {
          const float a = x1[i], b = x2[i], si = sign * s[i];
          x1[i] = a * c[i] - b * si;
          x2[i] = b * c[i] + a * si;
        }
      }
  }
}

}  // namespace

void rope_forward(float* qkv, const float* cos, const float* sin, int B, int T, int NH, int NKV,
                  int HD, int rot_dim) {
  rope_apply(qkv, cos, sin, B, T, NH, NKV, HD, rot_dim, 1.0f);
}

void rope_backward(float* dqkv, const float* cos, const float* sin, int B, int T, int NH, int NKV,
                   int HD, int rot_dim) {
  rope_apply(dqkv, cos, sin, B, T, NH, NKV, HD, rot_dim, -1.0f);
}

}  // namespace lossytp::cpu
