// LayerNorm (one warp per row) and tanh-GELU, forward and backward, as kernels/cpu.
#include <cmath>

#include "kernels/cuda/column_sums.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

namespace {

__device__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void layernorm_forward_k(float* out, float* mean, float* rstd, const float* inp,
                                    const float* w, const float* b, int N, int C, float eps) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const float* x = inp + static_cast<size_t>(row) * C;
  float s = 0.0f;
  for (int c = lane; c < C; c += 32) s += x[c];
  const float m = warp_sum(s) / C;
  float v = 0.0f;
  for (int c = lane; c < C; c += 32) v += (x[c] - m) * (x[c] - m);
  const float r = rsqrtf(warp_sum(v) / C + eps);
  float* y = out + static_cast<size_t>(row) * C;
  for (int c = lane; c < C; c += 32) y[c] = (x[c] - m) * r * w[c] + b[c];
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

__global__ void layernorm_backward_dinp(float* dinp, const float* dout, const float* inp,
                                        const float* w, const float* mean, const float* rstd,
                                        int N, int C) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= N) return;
  const size_t off = static_cast<size_t>(row) * C;
  const float m = mean[row], r = rstd[row];
  float a = 0.0f, bsum = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float dn = dout[off + c] * w[c];
    a += dn;
    bsum += dn * (inp[off + c] - m) * r;
  }
  a = warp_sum(a) / C;
  bsum = warp_sum(bsum) / C;
  for (int c = lane; c < C; c += 32) {
    const float xhat = (inp[off + c] - m) * r;
    dinp[off + c] += (dout[off + c] * w[c] - a - xhat * bsum) * r;
  }
}

// dweight, dbias: deterministic column sums (column_sums.cuh) of dout * xhat and dout.
struct LayerNormParamGrads {
  const float *dout, *inp, *mean, *rstd;
  int C;
  __device__ void operator()(int n, int c, float (&v)[2]) const {
    const size_t i = static_cast<size_t>(n) * C + c;
    v[0] = dout[i] * (inp[i] - mean[n]) * rstd[n];
    v[1] = dout[i];
  }
};

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2/pi)

__global__ void gelu_forward_k(float* out, const float* inp, size_t n) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float x = inp[i];
  out[i] = 0.5f * x * (1.0f + tanhf(kGeluK * (x + 0.044715f * x * x * x)));
}

__global__ void gelu_backward_k(float* dinp, const float* inp, const float* dout, size_t n) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float x = inp[i];
  const float t = tanhf(kGeluK * (x + 0.044715f * x * x * x));
  const float d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kGeluK * (1.0f + 3.0f * 0.044715f * x * x);
  dinp[i] = d * dout[i];
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C, float eps) {
  layernorm_forward_k<<<blocks_for(static_cast<size_t>(N) * 32), kThreads>>>(out, mean, rstd, inp, weight, bias, N, C, eps);
  check_launch("layernorm_forward");
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C) {
  layernorm_backward_dinp<<<blocks_for(static_cast<size_t>(N) * 32), kThreads>>>(dinp, dout, inp, weight, mean, rstd, N, C);
  check_launch("layernorm_backward_dinp");
  column_sums<2>({{dweight, dbias}}, N, C, LayerNormParamGrads{dout, inp, mean, rstd, C}, "layernorm_backward_params");
}

void gelu_forward(float* out, const float* inp, size_t n) {
  gelu_forward_k<<<blocks_for(n), kThreads>>>(out, inp, n);
  check_launch("gelu_forward");
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  gelu_backward_k<<<blocks_for(n), kThreads>>>(dinp, inp, dout, n);
  check_launch("gelu_backward");
}

}  // namespace lossytp::cuda
