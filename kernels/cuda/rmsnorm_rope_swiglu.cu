// The Llama kernels on the GPU: RMSNorm (one warp per row, as LayerNorm), rotary embedding and
// SwiGLU (one thread per element), and fill_cols; the twins of kernels/cpu/rmsnorm.cpp, rope.cpp,
// swiglu.cpp and fill_cols in vector_ops.cpp. Every reduction has a fixed order.
#include <cmath>
#include <string>

#include "kernels/cuda/column_sums.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

namespace {

__device__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- RMSNorm

__global__ void rmsnorm_forward_k(float* out, float* rstd, const float* inp, const float* w, int N,
                                  int C, float eps) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const float* x = inp + static_cast<size_t>(row) * C;
  float ss = 0.0f;
  for (int c = lane; c < C; c += 32) ss += x[c] * x[c];
  const float r = rsqrtf(warp_sum(ss) / C + eps);
  float* y = out + static_cast<size_t>(row) * C;
  for (int c = lane; c < C; c += 32) y[c] = x[c] * r * w[c];
  if (lane == 0 && rstd != nullptr) rstd[row] = r;
}

// dx += r (dy w - xhat mean(dy w xhat)), xhat = x r.
__global__ void rmsnorm_backward_dinp(float* dinp, const float* dout, const float* inp,
                                      const float* w, const float* rstd, int N, int C) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const size_t off = static_cast<size_t>(row) * C;
  const float r = rstd[row];
  float a = 0.0f;
  for (int c = lane; c < C; c += 32) a += dout[off + c] * w[c] * (inp[off + c] * r);
  a = warp_sum(a) / C;
  for (int c = lane; c < C; c += 32)
    dinp[off + c] += (dout[off + c] * w[c] - (inp[off + c] * r) * a) * r;
}

// dw[c] += sum_n dy[n, c] xhat[n, c]: deterministic column sums (column_sums.cuh).
struct RmsNormWeightGrad {
  const float *dout, *inp, *rstd;
  int C;
  __device__ void operator()(int n, int c, float (&v)[1]) const {
    const size_t i = static_cast<size_t>(n) * C + c;
    v[0] = dout[i] * (inp[i] * rstd[n]);
  }
};

// ---- rotary embedding: one thread per (token, q or k head, pair i < h). sign -1: the transpose.
__global__ void rope_k(float* qkv, const float* cos, const float* sin, int T, int NH, int NKV,
                       int HD, int h, float sign, size_t total) {
  const size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const int i = static_cast<int>(idx % h);
  const size_t rest = idx / h;
  const int hh = static_cast<int>(rest % (NH + NKV));  // q heads 0..NH-1, then the NKV k heads
  const size_t bt = rest / (NH + NKV);
  const int t = static_cast<int>(bt % T);
  const int qpg = NH / NKV;
  const int g = hh < NH ? hh / qpg : hh - NH;
  const int j = hh < NH ? hh % qpg : qpg;
  float* x = qkv + bt * static_cast<size_t>(NH + 2 * NKV) * HD +
             (static_cast<size_t>(g) * (qpg + 2) + j) * HD;
  const float c = cos[static_cast<size_t>(t) * h + i], s = sign * sin[static_cast<size_t>(t) * h + i];
  const float a = x[i], b = x[i + h];
  x[i] = a * c - b * s;
  x[i + h] = b * c + a * s;
}

void rope_launch(const char* name, float* qkv, const float* cos, const float* sin, int B, int T,
                 int NH, int NKV, int HD, int rot_dim, float sign) {
  if (NKV <= 0 || NH <= 0 || NH % NKV != 0 || rot_dim < 0 || rot_dim % 2 != 0 || rot_dim > HD)
    throw std::invalid_argument(std::string(name) + ": need NH % NKV == 0 and an even rot_dim <= HD");
  const int h = rot_dim / 2;
  if (B <= 0 || T <= 0 || h == 0) return;
  const size_t total = static_cast<size_t>(B) * T * (NH + NKV) * h;
  rope_k<<<blocks_for(total), kThreads>>>(qkv, cos, sin, T, NH, NKV, HD, h, sign, total);
  check_launch(name);
}

// ---- SwiGLU: one thread per (row, f). exp argument clamped at 88 as on the CPU.
constexpr float kArgMax = 88.0f;

__global__ void swiglu_forward_k(float* out, const float* inp, int F, size_t total) {
  const size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const size_t n = idx / F, f = idx % F;
  const float g = inp[n * 2 * F + f], u = inp[n * 2 * F + F + f];
  out[idx] = g / (1.0f + expf(fminf(-g, kArgMax))) * u;
}

__global__ void swiglu_backward_k(float* dinp, const float* inp, const float* dout, int F,
                                  size_t total) {
  const size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const size_t n = idx / F, f = idx % F;
  const size_t ig = n * 2 * F + f, iu = ig + F;
  const float g = inp[ig], u = inp[iu], dy = dout[idx];
  const float e = expf(fminf(-g, kArgMax));
  const float s = 1.0f / (1.0f + e);
  dinp[ig] = dy * u * (s * (1.0f + g * (e * s)));  // silu' = s (1 + g (1 - s)), 1 - s = e s
  dinp[iu] = dy * (g * s);
}

__global__ void fill_cols_k(float* x, int N, int ld, int c0, int w, float v) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(N) * w) return;
  x[(i / w) * ld + c0 + i % w] = v;
}

}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C,
                     float eps) {
  if (N <= 0 || C <= 0) return;
  rmsnorm_forward_k<<<blocks_for(static_cast<size_t>(N) * 32), kThreads>>>(out, rstd, inp, weight, N, C, eps);
  check_launch("rmsnorm_forward");
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int N, int C) {
  if (N <= 0 || C <= 0) return;
  if (dinp != nullptr) {
    rmsnorm_backward_dinp<<<blocks_for(static_cast<size_t>(N) * 32), kThreads>>>(dinp, dout, inp, weight, rstd, N, C);
    check_launch("rmsnorm_backward_dinp");
  }
  if (dweight != nullptr) {
    column_sums<1>({{dweight}}, N, C, RmsNormWeightGrad{dout, inp, rstd, C}, "rmsnorm_backward_dweight");
  }
}

void rope_forward(float* qkv, const float* cos, const float* sin, int B, int T, int NH, int NKV,
                  int HD, int rot_dim) {
  rope_launch("rope_forward", qkv, cos, sin, B, T, NH, NKV, HD, rot_dim, 1.0f);
}

void rope_backward(float* dqkv, const float* cos, const float* sin, int B, int T, int NH, int NKV,
                   int HD, int rot_dim) {
  rope_launch("rope_backward", dqkv, cos, sin, B, T, NH, NKV, HD, rot_dim, -1.0f);
}

void swiglu_forward(float* out, const float* inp, int N, int F) {
  const size_t total = static_cast<size_t>(N > 0 ? N : 0) * (F > 0 ? F : 0);
  if (total == 0) return;
  swiglu_forward_k<<<blocks_for(total), kThreads>>>(out, inp, F, total);
  check_launch("swiglu_forward");
}

void swiglu_backward(float* dinp, const float* inp, const float* dout, int N, int F) {
  const size_t total = static_cast<size_t>(N > 0 ? N : 0) * (F > 0 ? F : 0);
  if (total == 0) return;
  swiglu_backward_k<<<blocks_for(total), kThreads>>>(dinp, inp, dout, F, total);
  check_launch("swiglu_backward");
}

void fill_cols(float* x, int N, int ld, int c0, int c1, float v) {
  if (N <= 0 || c0 >= c1) return;
  const size_t n = static_cast<size_t>(N) * (c1 - c0);
  fill_cols_k<<<blocks_for(n), kThreads>>>(x, N, ld, c0, c1 - c0, v);
  check_launch("fill_cols");
}

}  // namespace lossytp::cuda
