// Causal attention on the GPU, written for correctness first: one thread per (batch, head,
// position), scores recomputed instead of stored (never a T x T matrix), every sum in a fixed
// order. The backward is split so that no two threads write the same element: dq per query
// row, dk and dv per key row. A tiled (flash-attention) version is the next step for speed.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

namespace {

struct Dims {
  int B, T, NH, HD;
  __device__ size_t q(int b, int t, int h) const { return ((static_cast<size_t>(b) * T + t) * NH + h) * 3 * HD; }
  __device__ size_t o(int b, int t, int h) const { return ((static_cast<size_t>(b) * T + t) * NH + h) * HD; }
  __device__ size_t l(int b, int t, int h) const { return (static_cast<size_t>(b) * NH + h) * T + t; }
};

__device__ float dot(const float* a, const float* b, int n) {
  float s = 0.0f;
  for (int d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

__global__ void attn_forward_k(float* out, float* lse, const float* qkv, Dims D, float scale) {
  const size_t id = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (id >= static_cast<size_t>(D.B) * D.NH * D.T) return;
  const int t = id % D.T, h = (id / D.T) % D.NH, b = id / (static_cast<size_t>(D.T) * D.NH);
  const float* q = qkv + D.q(b, t, h);
  float m = -INFINITY;
  for (int s = 0; s <= t; ++s) m = fmaxf(m, dot(q, qkv + D.q(b, s, h) + D.HD, D.HD) * scale);
  float* o = out + D.o(b, t, h);
  for (int d = 0; d < D.HD; ++d) o[d] = 0.0f;
  float l = 0.0f;
  for (int s = 0; s <= t; ++s) {
    const float p = expf(dot(q, qkv + D.q(b, s, h) + D.HD, D.HD) * scale - m);
    l += p;
    const float* v = qkv + D.q(b, s, h) + 2 * D.HD;
    for (int d = 0; d < D.HD; ++d) o[d] += p * v[d];
  }
  for (int d = 0; d < D.HD; ++d) o[d] /= l;
  lse[D.l(b, t, h)] = m + logf(l);
}

// Drow[b,h,t] = dO_t . O_t
__global__ void attn_delta_k(float* Drow, const float* dout, const float* out, Dims D) {
  const size_t id = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (id >= static_cast<size_t>(D.B) * D.NH * D.T) return;
  const int t = id % D.T, h = (id / D.T) % D.NH, b = id / (static_cast<size_t>(D.T) * D.NH);
  Drow[D.l(b, t, h)] = dot(dout + D.o(b, t, h), out + D.o(b, t, h), D.HD);
}

// dq_t = scale * sum_{s<=t} dS_ts k_s,  dS_ts = P_ts (dO_t . v_s - D_t)
__global__ void attn_dq_k(float* dqkv, const float* dout, const float* qkv, const float* lse,
                          const float* Drow, Dims D, float scale) {
  const size_t id = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (id >= static_cast<size_t>(D.B) * D.NH * D.T) return;
  const int t = id % D.T, h = (id / D.T) % D.NH, b = id / (static_cast<size_t>(D.T) * D.NH);
  const float* q = qkv + D.q(b, t, h);
  const float* dO = dout + D.o(b, t, h);
  const float L = lse[D.l(b, t, h)], Dt = Drow[D.l(b, t, h)];
  float* dq = dqkv + D.q(b, t, h);
  for (int d = 0; d < D.HD; ++d) dq[d] = 0.0f;
  for (int s = 0; s <= t; ++s) {
    const float* k = qkv + D.q(b, s, h) + D.HD;
    const float p = expf(dot(q, k, D.HD) * scale - L);
    const float ds = p * (dot(dO, k + D.HD, D.HD) - Dt);
    for (int d = 0; d < D.HD; ++d) dq[d] += ds * k[d] * scale;
  }
}

// dk_s = scale * sum_{t>=s} dS_ts q_t,  dv_s = sum_{t>=s} P_ts dO_t
__global__ void attn_dkv_k(float* dqkv, const float* dout, const float* qkv, const float* lse,
                           const float* Drow, Dims D, float scale) {
  const size_t id = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (id >= static_cast<size_t>(D.B) * D.NH * D.T) return;
  const int s = id % D.T, h = (id / D.T) % D.NH, b = id / (static_cast<size_t>(D.T) * D.NH);
  const float* k = qkv + D.q(b, s, h) + D.HD;
  const float* v = k + D.HD;
  float* dk = dqkv + D.q(b, s, h) + D.HD;
  float* dv = dk + D.HD;
  for (int d = 0; d < D.HD; ++d) dk[d] = dv[d] = 0.0f;
  for (int t = s; t < D.T; ++t) {
    const float* q = qkv + D.q(b, t, h);
    const float* dO = dout + D.o(b, t, h);
    const float p = expf(dot(q, k, D.HD) * scale - lse[D.l(b, t, h)]);
    const float ds = p * (dot(dO, v, D.HD) - Drow[D.l(b, t, h)]);
    for (int d = 0; d < D.HD; ++d) {
      dk[d] += ds * q[d] * scale;
      dv[d] += p * dO[d];
    }
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int HD) {
  const size_t n = static_cast<size_t>(B) * NH * T;
  attn_forward_k<<<blocks_for(n, 128), 128>>>(out, lse, qkv, Dims{B, T, NH, HD}, 1.0f / sqrtf(static_cast<float>(HD)));
  check_launch("attention_forward");
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int NH, int HD) {
  const size_t n = static_cast<size_t>(B) * NH * T;
  const Dims D{B, T, NH, HD};
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  float* Drow = nullptr;
  check_cuda(cudaMalloc(&Drow, n * sizeof(float)), "cudaMalloc");
  attn_delta_k<<<blocks_for(n, 128), 128>>>(Drow, dout, out, D);
  attn_dq_k<<<blocks_for(n, 128), 128>>>(dqkv, dout, qkv, lse, Drow, D, scale);
  attn_dkv_k<<<blocks_for(n, 128), 128>>>(dqkv, dout, qkv, lse, Drow, D, scale);
  check_launch("attention_backward");
  cudaFree(Drow);  // ordered after the kernels on the default stream
}

}  // namespace lossytp::cuda
