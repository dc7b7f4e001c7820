// Embeddings, the vocab-parallel cross-entropy pieces and AdamW on the GPU, as kernels/cpu.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

namespace {

__global__ void embedding_forward_k(float* out, const int32_t* tok, const float* table, int N,
                                    int C, int v0, int V) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(N) * C) return;
  const int n = i / C, c = i % C, t = tok[n] - v0;
  out[i] = (t >= 0 && t < V) ? table[static_cast<size_t>(t) * C + c] : 0.0f;
}

__global__ void embedding_backward_k(float* dtable, const int32_t* tok, const float* dout, int N,
                                     int C, int v0, int V) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(N) * C) return;
  const int n = i / C, c = i % C, t = tok[n] - v0;
  if (t >= 0 && t < V) atomicAdd(dtable + static_cast<size_t>(t) * C + c, dout[i]);
}

__global__ void position_forward_k(float* out, const float* pos, int B, int T, int C) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(B) * T * C) return;
  out[i] += pos[i % (static_cast<size_t>(T) * C)];
}

__global__ void position_backward_k(float* dpos, const float* dout, int B, int T, int C) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  const size_t TC = static_cast<size_t>(T) * C;
  if (i >= TC) return;
  float s = 0.0f;
  for (int b = 0; b < B; ++b) s += dout[b * TC + i];
  dpos[i] += s;
}

// The cross-entropy row kernels: one block of kThreads per row (a row is a vocabulary shard of
// up to 50k logits: one thread per row left the GPU idle, 14 % of a gpt2-124m step on an H200).
// Each thread runs over a fixed stride of the row, then a fixed tree: deterministic.
template <class Op>
__device__ float block_reduce(float v, Op op) {
  __shared__ float warp_part[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = v;
  __syncthreads();
  v = warp_part[0];
  for (int w = 1; w < kThreads / 32; ++w) v = op(v, warp_part[w]);
  __syncthreads();  // warp_part is reused by the next call
  return v;
}
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

__global__ void ce_max_k(float* row_max, const float* logits, int N, int V) {
  const float* l = logits + static_cast<size_t>(blockIdx.x) * V;
  float m = -INFINITY;
  for (int v = threadIdx.x; v < V; v += kThreads) m = fmaxf(m, l[v]);
  m = block_reduce(m, MaxOp{});
  if (threadIdx.x == 0) row_max[blockIdx.x] = m;
}

__global__ void ce_target_k(float* target, const float* logits, const int32_t* tgt, int N, int V, int v0) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int t = tgt[n] - v0;
  target[n] = (t >= 0 && t < V) ? logits[static_cast<size_t>(n) * V + t] : 0.0f;
}

__global__ void ce_exp_sum_k(float* sum_exp, float* logits, const float* row_max, int N, int V) {
  float* l = logits + static_cast<size_t>(blockIdx.x) * V;
  const float m = row_max[blockIdx.x];
  float s = 0.0f;
  for (int v = threadIdx.x; v < V; v += kThreads) {
    const float e = expf(l[v] - m);
    l[v] = e;
    s += e;
  }
  s = block_reduce(s, SumOp{});
  if (threadIdx.x == 0) sum_exp[blockIdx.x] = s;
}

__global__ void ce_losses_k(float* losses, const float* row_max, const float* sum_exp,
                            const float* target, const int32_t* tgt, int N) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n < N) losses[n] = tgt[n] < 0 ? 0.0f : logf(sum_exp[n]) + row_max[n] - target[n];
}

__global__ void ce_backward_k(float* logits, const float* sum_exp, const int32_t* tgt,
                              const float* dloss, int N, int V, int v0) {
  const int n = blockIdx.x;
  float* l = logits + static_cast<size_t>(n) * V;
  if (tgt[n] < 0) {
    for (int v = threadIdx.x; v < V; v += kThreads) l[v] = 0.0f;
    return;
  }
  const float inv = 1.0f / sum_exp[n], d = dloss[n];
  const int t = tgt[n] - v0;
  for (int v = threadIdx.x; v < V; v += kThreads) l[v] = (l[v] * inv - (v == t ? 1.0f : 0.0f)) * d;
}

__global__ void adamw_k(float* p, const float* g, float* m, float* v, size_t n, float lr, float b1,
                        float b2, float eps, float wd, float inv_bc1, float inv_bc2) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float gi = g[i];
  const float mi = b1 * m[i] + (1.0f - b1) * gi;
  const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  p[i] -= lr * ((mi * inv_bc1) / (sqrtf(vi * inv_bc2) + eps) + wd * p[i]);
}

}  // namespace

void embedding_forward(float* out, const int32_t* tok, const float* table, int N, int C,
                       int vocab_start, int V) {
  embedding_forward_k<<<blocks_for(static_cast<size_t>(N) * C), kThreads>>>(out, tok, table, N, C, vocab_start, V);
  check_launch("embedding_forward");
}
void embedding_backward(float* dtable, const int32_t* tok, const float* dout, int N, int C,
                        int vocab_start, int V) {
  embedding_backward_k<<<blocks_for(static_cast<size_t>(N) * C), kThreads>>>(dtable, tok, dout, N, C, vocab_start, V);
  check_launch("embedding_backward");
}
void position_forward(float* out, const float* pos, int B, int T, int C) {
  position_forward_k<<<blocks_for(static_cast<size_t>(B) * T * C), kThreads>>>(out, pos, B, T, C);
  check_launch("position_forward");
}
void position_backward(float* dpos, const float* dout, int B, int T, int C) {
  position_backward_k<<<blocks_for(static_cast<size_t>(T) * C), kThreads>>>(dpos, dout, B, T, C);
  check_launch("position_backward");
}
void ce_local_max(float* row_max, const float* logits, int N, int V) {
  if (N <= 0) return;
  ce_max_k<<<N, kThreads>>>(row_max, logits, N, V);
  check_launch("ce_local_max");
}
void ce_local_target(float* target_logit, const float* logits, const int32_t* tgt, int N, int V,
                     int vocab_start) {
  ce_target_k<<<blocks_for(N), kThreads>>>(target_logit, logits, tgt, N, V, vocab_start);
  check_launch("ce_local_target");
}
void ce_local_exp_sum(float* sum_exp, float* logits, const float* row_max, int N, int V) {
  if (N <= 0) return;
  ce_exp_sum_k<<<N, kThreads>>>(sum_exp, logits, row_max, N, V);
  check_launch("ce_local_exp_sum");
}
void ce_losses(float* losses, const float* row_max, const float* sum_exp,
               const float* target_logit, const int32_t* tgt, int N) {
  ce_losses_k<<<blocks_for(N), kThreads>>>(losses, row_max, sum_exp, target_logit, tgt, N);
  check_launch("ce_losses");
}
void ce_backward_inplace(float* logits, const float* sum_exp, const int32_t* tgt,
                         const float* dloss, int N, int V, int vocab_start) {
  if (N <= 0) return;
  ce_backward_k<<<N, kThreads>>>(logits, sum_exp, tgt, dloss, N, V, vocab_start);
  check_launch("ce_backward_inplace");
}

void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t t) {
  // bias corrections in double on the host, as the CPU does
  const float inv_bc1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t))));
  const float inv_bc2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t))));
  adamw_k<<<blocks_for(n), kThreads>>>(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, inv_bc1, inv_bc2);
  check_launch("adamw_update");
}

}  // namespace lossytp::cuda
