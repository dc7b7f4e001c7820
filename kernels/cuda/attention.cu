// Causal attention on the GPU, the way PyTorch eager does it: the T x T score matrix of every
// head is materialised and the products run on cuBLAS (fp32 SGEMM, default math mode: no TF32),
// with two small row kernels for the softmax. Layouts and semantics are kernels/cpu/ops.h's:
// qkv [B, T, NH, 3, HD], out [B, T, NH, HD], lse [B, NH, T], scale 1/sqrt(HD), dqkv OVERWRITTEN.
//
// For one sequence b the q (k, v) vectors of head h form a row-major [T, HD] matrix with row
// stride NH*3*HD that starts 3*HD floats after head h-1's: one strided-batched GEMM covers all
// NH heads of a sequence (loop over b). Likewise out and dout ([T, HD] per head, row stride
// NH*HD, head stride HD) and the three [T, HD] slices of dqkv per head (row stride NH*3*HD).
//
// Forward, per head:  S = scale Q K^T                                  (GEMM, [T, T])
//                     P = causal softmax of S, in place; lse = m + log(sum exp(S - m))
//                     O = P V, written straight into out               (GEMM)
// Backward, per head: S = scale Q K^T        (recomputed: nothing but lse is kept from forward)
//                     dP = dO V^T                                      (GEMM)
//                     D_t = dO_t . O_t, P = exp(S - lse), dS = P * (dP - D), in place (row kernel)
//                     dV = P^T dO, dQ = scale dS K, dK = scale dS^T Q  (GEMMs, beta = 0: every
//                     element of dqkv is written, the input is never read)
// Masked entries (key > query) get P = 0 and dS = 0 exactly. The GEMMs compute the whole square
// (the masked half too, as PyTorch's eager path does): about 2x the causal FLOPs, at cuBLAS speed.
//
// Scratch: the T x T buffers (S/P in the forward; P and dP in the backward) for a chunk of
// sequences, at most kScratchFloats floats per buffer (at least one sequence), are a thread_local
// DeviceScratch: grown when a larger problem comes, never freed or allocated otherwise. Host
// threads (virtual ranks sharing one GPU) each have their own buffers and cuBLAS handle; all work
// is on the legacy default stream, so a thread's next call reuses its buffers in order.
// Determinism: cuBLAS SGEMM and the fixed-order warp reductions give the same bits on every run
// on the same GPU and library version.
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublas_handle.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

namespace {

// Floats per T x T scratch buffer (256 MiB): gpt2-124m (B=8, NH=12, T=1024, 12.6 M floats per
// sequence) runs in two chunks of 4 sequences.
constexpr size_t kScratchFloats = size_t(1) << 26;
constexpr int kRowsPerBlock = 8;  // row kernels: one warp per row
constexpr int kRowThreads = 32 * kRowsPerBlock;

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Causal softmax of rows of S (row r is query t = r % T of its head), in place: P[r, k] =
// exp(S[r, k] - m) / l for k <= t and exactly 0 for k > t; lse[r] = m + log(l), with m the row
// max and l the sum of exp(S - m) over k <= t.
__global__ void causal_softmax_k(float* S, float* lse, int rows, int T) {
  const size_t row = (blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= static_cast<size_t>(rows)) return;  // whole warps leave together
  const int t = static_cast<int>(row % T);
  float* s = S + row * T;
  float m = -INFINITY;
  for (int k = lane; k <= t; k += 32) m = fmaxf(m, s[k]);
  m = warp_max(m);
  float l = 0.0f;
  for (int k = lane; k <= t; k += 32) l += expf(s[k] - m);
  l = warp_sum(l);
  const float inv = 1.0f / l;
  for (int k = lane; k < T; k += 32) s[k] = k <= t ? expf(s[k] - m) * inv : 0.0f;
  if (lane == 0) lse[row] = m + logf(l);
}

// Backward rows, in place. Row r of the chunk is query t = r % T of head bh = bh0 + r / T
// (bh = b * NH + h over the whole batch). On entry P holds S = scale Q K^T and dP holds dO V^T;
// on exit P = exp(S - lse) and dP = dS = P * (dP - D) with D = dO_t . O_t, both 0 for k > t.
__global__ void softmax_backward_k(float* P, float* dP, const float* lse, const float* dout,
                                   const float* out, int rows, int bh0, int T, int NH, int HD) {
  const size_t row = (blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= static_cast<size_t>(rows)) return;
  const int t = static_cast<int>(row % T);
  const size_t bh = bh0 + row / T;
  const size_t b = bh / NH, h = bh % NH;
  const size_t o = ((b * T + t) * NH + h) * HD;
  float d = 0.0f;
  for (int c = lane; c < HD; c += 32) d += dout[o + c] * out[o + c];
  d = warp_sum(d);
  const float L = lse[bh * T + t];
  float* p = P + row * T;
  float* g = dP + row * T;
  for (int k = lane; k < T; k += 32) {
    if (k <= t) {
      const float pk = expf(p[k] - L);
      p[k] = pk;
      g[k] = pk * (g[k] - d);
    } else {
      p[k] = 0.0f;
      g[k] = 0.0f;
    }
  }
}

// Row-major strided-batched GEMM, as cuda::sgemm (a row-major C = op(A) op(B) is the
// column-major C^T = op(B)^T op(A)^T): C_i = alpha op(A_i) op(B_i) + beta C_i for i < batch,
// X_i = X + i * strideX. beta = 0 never reads C.
void gemm_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, long long sA, const float* B, int ldb, long long sB, float beta,
                  float* C, int ldc, long long sC, int batch) {
  check_cublas(cublasSgemmStridedBatched(cublas_handle(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                         trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B,
                                         ldb, sB, A, lda, sA, &beta, C, ldc, sC, batch),
               "cublasSgemmStridedBatched (attention)");
}

// The problem and its chunking over sequences.
struct Plan {
  int B, T, NH, HD;
  float scale;
  size_t tt;        // T * T
  size_t per_seq;   // NH * T * T floats of one sequence's score matrices
  int chunk;        // sequences per chunk
  size_t buf;       // floats per scratch buffer (chunk * per_seq, rounded up to 64)
  int ldq() const { return NH * 3 * HD; }  // row stride of q, k, v and of dqkv
  int ldo() const { return NH * HD; }      // row stride of out and dout
  // q (w = 0), k (1) or v (2) of head 0 of sequence b, in qkv or dqkv
  size_t qkv_off(int b, int w) const { return static_cast<size_t>(b) * T * ldq() + static_cast<size_t>(w) * HD; }
  size_t out_off(int b) const { return static_cast<size_t>(b) * T * ldo(); }
};

Plan make_plan(int B, int T, int NH, int HD) {
  Plan p{B, T, NH, HD, 1.0f / sqrtf(static_cast<float>(HD)), 0, 0, 0, 0};
  p.tt = static_cast<size_t>(T) * T;
  p.per_seq = static_cast<size_t>(NH) * p.tt;
  const size_t total = p.per_seq * B;
  const size_t nchunks = std::clamp<size_t>((total + kScratchFloats - 1) / kScratchFloats, 1, B);
  p.chunk = static_cast<int>((B + nchunks - 1) / nchunks);  // balanced chunks
  p.buf = (p.per_seq * p.chunk + 63) / 64 * 64;              // keeps the second buffer 256-B aligned
  return p;
}

thread_local DeviceScratch attn_scratch;

unsigned row_blocks(size_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int HD) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const Plan p = make_plan(B, T, NH, HD);
  float* S = attn_scratch.get<float>(p.buf);
  const long long tt = static_cast<long long>(p.tt), hs = 3LL * HD;
  for (int b0 = 0; b0 < B; b0 += p.chunk) {
    const int nb = std::min(p.chunk, B - b0);
    // S = scale Q K^T for every head of the chunk
    for (int i = 0; i < nb; ++i) {
      const int b = b0 + i;
      gemm_batched(false, true, T, T, HD, p.scale, qkv + p.qkv_off(b, 0), p.ldq(), hs,
                   qkv + p.qkv_off(b, 1), p.ldq(), hs, 0.0f, S + i * p.per_seq, T, tt, NH);
    }
    const size_t rows = static_cast<size_t>(nb) * NH * T;
    causal_softmax_k<<<row_blocks(rows), kRowThreads>>>(S, lse + static_cast<size_t>(b0) * NH * T,
                                                        static_cast<int>(rows), T);
    check_launch("causal_softmax");
    // O = P V, into out's [B, T, NH, HD] layout
    for (int i = 0; i < nb; ++i) {
      const int b = b0 + i;
      gemm_batched(false, false, T, HD, T, 1.0f, S + i * p.per_seq, T, tt, qkv + p.qkv_off(b, 2),
                   p.ldq(), hs, 0.0f, out + p.out_off(b), p.ldo(), HD, NH);
    }
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int NH, int HD) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const Plan p = make_plan(B, T, NH, HD);
  float* P = attn_scratch.get<float>(2 * p.buf);
  float* dP = P + p.buf;
  const long long tt = static_cast<long long>(p.tt), hs = 3LL * HD;
  for (int b0 = 0; b0 < B; b0 += p.chunk) {
    const int nb = std::min(p.chunk, B - b0);
    for (int i = 0; i < nb; ++i) {
      const int b = b0 + i;
      const float* q = qkv + p.qkv_off(b, 0);
      const float* k = qkv + p.qkv_off(b, 1);
      const float* v = qkv + p.qkv_off(b, 2);
      const float* go = dout + p.out_off(b);
      // S = scale Q K^T (into P), dP = dO V^T
      gemm_batched(false, true, T, T, HD, p.scale, q, p.ldq(), hs, k, p.ldq(), hs, 0.0f,
                   P + i * p.per_seq, T, tt, NH);
      gemm_batched(false, true, T, T, HD, 1.0f, go, p.ldo(), HD, v, p.ldq(), hs, 0.0f,
                   dP + i * p.per_seq, T, tt, NH);
    }
    const size_t rows = static_cast<size_t>(nb) * NH * T;
    softmax_backward_k<<<row_blocks(rows), kRowThreads>>>(P, dP, lse, dout, out,
                                                          static_cast<int>(rows), b0 * NH, T, NH, HD);
    check_launch("attention softmax_backward");
    for (int i = 0; i < nb; ++i) {
      const int b = b0 + i;
      const float* q = qkv + p.qkv_off(b, 0);
      const float* k = qkv + p.qkv_off(b, 1);
      const float* go = dout + p.out_off(b);
      const float* Pi = P + i * p.per_seq;
      const float* dSi = dP + i * p.per_seq;
      // dV = P^T dO, dQ = scale dS K, dK = scale dS^T Q, each overwriting its slice of dqkv
      gemm_batched(true, false, T, HD, T, 1.0f, Pi, T, tt, go, p.ldo(), HD, 0.0f,
                   dqkv + p.qkv_off(b, 2), p.ldq(), hs, NH);
      gemm_batched(false, false, T, HD, T, p.scale, dSi, T, tt, k, p.ldq(), hs, 0.0f,
                   dqkv + p.qkv_off(b, 0), p.ldq(), hs, NH);
      gemm_batched(true, false, T, HD, T, p.scale, dSi, T, tt, q, p.ldq(), hs, 0.0f,
                   dqkv + p.qkv_off(b, 1), p.ldq(), hs, NH);
    }
  }
}

}  // namespace lossytp::cuda
