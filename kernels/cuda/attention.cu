// Causal attention on the GPU, the way PyTorch eager does it: the T x T score matrix of every
// head is materialised and the products run on cuBLAS, with two small row kernels for the
// softmax. Layouts and semantics are kernels/cpu/ops.h's: NH query heads in NKV groups sharing a
// k and v head (GQA; R = NH / NKV heads a group, R = 1: multi-head), qkv [B, T, NKV, R + 2, HD]
// (Megatron's grouped fused QKV), out [B, T, NH, HD], lse [B, NH, T], scale 1/sqrt(HD), dqkv
// OVERWRITTEN with a group's dK and dV summed over its heads. Two precisions share
// all the control flow below (a precision flag picks the GEMM and the row kernels' outputs):
//  - fp32 (attention_forward/backward): cublasSgemmStridedBatched, default math mode (no TF32);
//  - bf16 (attention_forward_bf16/backward_bf16, for --bf16): every GEMM operand is rounded to
//    bf16 (kernels/bf16.h, round to nearest even, the CPU's rounding): Q, K, V and dO once per
//    call into a bf16 copy with the same strided layout (so the same strides and ld work), the
//    probabilities P and dS by the row kernels, which write a bf16 copy of them. The GEMMs are
//    cublasGemmStridedBatchedEx with bf16 A/B, fp32 C, CUBLAS_COMPUTE_32F (tensor cores). S, dP,
//    O, dQ, dK, dV, the softmax, lse and D are fp32; D = rowsum(dO * O) uses the rounded dO (the
//    dO the GEMMs see, so D = rowsum(P * dP) as the gradient needs; the CPU twin does the same).
//
// For one sequence b the q vectors of head h = g R + r (the r-th query head of group g) form a
// row-major [T, HD] matrix with row stride ldq = (NH + 2 NKV) HD that starts (R + 2) HD elements
// after the one of head h - R (the same r in group g - 1); so do the k and v of group g. One
// strided-batched GEMM covers the r-th heads of all NKV groups of a sequence, each reading its
// group's K and V in place (no copy per head); loop over b and r (R = 1: one GEMM per sequence
// over all heads). Likewise out and dout ([T, HD] per head, row stride NH*HD, stride R*HD from
// group to group), the score buffers (head h's [T, T] at h T^2) and the [T, HD] slices of dqkv.
// The group sums dK = sum_r scale dS_r^T Q_r and dV = sum_r P_r^T dO_r are GEMMs with beta = 0
// for r = 0 and beta = 1 after, one after the other on the stream: fixed order, no atomics.
//
// Forward, per head:  S = scale Q K^T                                  (GEMM, [T, T])
//                     P = causal softmax of S (fp32: in place; bf16: into a bf16 copy);
//                     lse = m + log(sum exp(S - m))
//                     O = P V, written straight into out               (GEMM)
// Backward, per head: S = scale Q K^T        (recomputed: nothing but lse is kept from forward)
//                     dP = dO V^T                                      (GEMM)
//                     D_t = dO_t . O_t, P = exp(S - lse), dS = P * (dP - D) (row kernel; fp32:
//                     in place; bf16: P and dS into bf16 copies)
//                     dV = P^T dO, dQ = scale dS K, dK = scale dS^T Q  (GEMMs; beta = 0 at a
//                     group's first head: every element of dqkv is written, the input is never
//                     read)
// Masked entries (key > query) get P = 0 and dS = 0 exactly. The GEMMs compute the whole square
// (the masked half too, as PyTorch's eager path does): about 2x the causal FLOPs, at cuBLAS speed.
//
// Scratch: the fp32 T x T buffers (S/P in the forward; P and dP in the backward) for a chunk of
// sequences, at most kScratchFloats floats per buffer (at least one sequence), are a thread_local
// DeviceScratch; the bf16 mode adds a second one for its bf16 copies (P, dS of a chunk; qkv and
// dout of the whole call). Both are grown when a larger problem comes, never freed or allocated
// otherwise. Host threads (virtual ranks sharing one GPU) each have their own buffers and cuBLAS
// handle; all work is on the legacy default stream, so a thread's next call reuses its buffers in
// order. Determinism: cuBLAS and the fixed-order warp reductions give the same bits on every run
// on the same GPU and library version.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/bf16.h"
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

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ __nv_bfloat16 to_bf16(float x) { return __ushort_as_bfloat16(bf16_bits(x)); }

// Causal softmax of rows of S (row r is query t = r % T of its head): P[r, k] =
// exp(S[r, k] - m) / l for k <= t and exactly 0 for k > t; lse[r] = m + log(l), with m the row
// max and l the sum of exp(S - m) over k <= t. kBf16: P goes to Pb (bf16, same [rows, T] layout)
// and S is left as it is; otherwise P overwrites S.
template <bool kBf16>
__global__ void causal_softmax_k(float* S, __nv_bfloat16* Pb, float* lse, int rows, int T) {
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
  for (int k = lane; k < T; k += 32) {
    const float pk = k <= t ? expf(s[k] - m) * inv : 0.0f;
    if constexpr (kBf16) Pb[row * T + k] = to_bf16(pk);
    else s[k] = pk;
  }
  if (lane == 0) lse[row] = m + logf(l);
}

// Backward rows. Row r of the chunk is query t = r % T of head bh = bh0 + r / T (bh = b * NH + h
// over the whole batch). On entry P holds S = scale Q K^T and dP holds dO V^T; the results are
// P = exp(S - lse) and dS = P * (dP - D) with D = dO_t . O_t, both 0 for k > t. fp32 (DOut =
// float): in place, P into P and dS into dP. bf16 (DOut = __nv_bfloat16, dout the rounded copy):
// P into Pb and dS into dSb, rounded to bf16; P and dP are left as they are.
template <typename DOut>
__global__ void softmax_backward_k(float* P, float* dP, __nv_bfloat16* Pb, __nv_bfloat16* dSb,
                                   const float* lse, const DOut* dout, const float* out, int rows,
                                   int bh0, int T, int NH, int HD) {
  constexpr bool kBf16 = std::is_same_v<DOut, __nv_bfloat16>;
  const size_t row = (blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= static_cast<size_t>(rows)) return;
  const int t = static_cast<int>(row % T);
  const size_t bh = bh0 + row / T;
  const size_t b = bh / NH, h = bh % NH;
  const size_t o = ((b * T + t) * NH + h) * HD;
  float d = 0.0f;
  for (int c = lane; c < HD; c += 32) d += to_float(dout[o + c]) * out[o + c];
  d = warp_sum(d);
  const float L = lse[bh * T + t];
  float* p = P + row * T;
  float* g = dP + row * T;
  for (int k = lane; k < T; k += 32) {
    float pk = 0.0f, gk = 0.0f;
    if (k <= t) {
      pk = expf(p[k] - L);
      gk = pk * (g[k] - d);
    }
    if constexpr (kBf16) {
      Pb[row * T + k] = to_bf16(pk);
      dSb[row * T + k] = to_bf16(gk);
    } else {
      p[k] = pk;
      g[k] = gk;
    }
  }
}

// Row-major strided-batched GEMM, as cuda::sgemm (a row-major C = op(A) op(B) is the
// column-major C^T = op(B)^T op(A)^T): C_i = alpha op(A_i) op(B_i) + beta C_i for i < batch,
// X_i = X + i * strideX elements. beta = 0 never reads C. bf16: A and B are __nv_bfloat16
// (cublasGemmStridedBatchedEx, fp32 C and accumulation); otherwise float (SGEMM).
void gemm_batched(bool bf16, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                  const void* A, int lda, long long sA, const void* B, int ldb, long long sB,
                  float beta, float* C, int ldc, long long sC, int batch) {
  const cublasOperation_t opA = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opB = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (bf16) {
    check_cublas(cublasGemmStridedBatchedEx(cublas_handle(), opB, opA, N, M, K, &alpha, B,
                                            CUDA_R_16BF, ldb, sB, A, CUDA_R_16BF, lda, sA, &beta,
                                            C, CUDA_R_32F, ldc, sC, batch, CUBLAS_COMPUTE_32F,
                                            CUBLAS_GEMM_DEFAULT),
                 "cublasGemmStridedBatchedEx (bf16 attention)");
  } else {
    check_cublas(cublasSgemmStridedBatched(cublas_handle(), opB, opA, N, M, K, &alpha,
                                           static_cast<const float*>(B), ldb, sB,
                                           static_cast<const float*>(A), lda, sA, &beta, C, ldc,
                                           sC, batch),
                 "cublasSgemmStridedBatched (attention)");
  }
}

// A GEMM operand buffer: float, or its bf16 copy with the same layout; at(off) is element off.
struct Operand {
  const void* base;
  bool bf16;
  const void* at(size_t off) const {
    return static_cast<const char*>(base) + off * (bf16 ? sizeof(__nv_bfloat16) : sizeof(float));
  }
};

// The problem and its chunking over sequences.
struct Plan {
  int B, T, NH, NKV, HD;
  int R;            // query heads per group, NH / NKV
  float scale;
  size_t tt;        // T * T
  size_t per_seq;   // NH * T * T floats of one sequence's score matrices
  int chunk;        // sequences per chunk
  size_t buf;       // elements per scratch buffer (chunk * per_seq, rounded up to 64)
  int ldq() const { return (NH + 2 * NKV) * HD; }  // row stride of q, k, v and of dqkv
  int ldo() const { return NH * HD; }              // row stride of out and dout
  long long gs() const { return static_cast<long long>(R + 2) * HD; }  // group to group in qkv
  // q of the r-th head of group 0 (w = 0), k (w = 1) or v (w = 2) of group 0, of sequence b, in
  // qkv or dqkv
  size_t qkv_off(int b, int w, int r = 0) const {
    return static_cast<size_t>(b) * T * ldq() + static_cast<size_t>(w == 0 ? r : R + w - 1) * HD;
  }
  // the r-th head of group 0 of sequence b, in out or dout
  size_t out_off(int b, int r = 0) const { return static_cast<size_t>(b) * T * ldo() + static_cast<size_t>(r) * HD; }
  size_t qkv_elems() const { return static_cast<size_t>(B) * T * ldq(); }
  size_t out_elems() const { return static_cast<size_t>(B) * T * ldo(); }
};

Plan make_plan(int B, int T, int NH, int NKV, int HD) {
  if (NKV <= 0 || NH % NKV != 0)
    throw std::invalid_argument("cuda attention: NH = " + std::to_string(NH) +
                                " query heads are not a multiple of NKV = " + std::to_string(NKV) +
                                " key/value heads");
  Plan p{B, T, NH, NKV, HD, NH / NKV, 1.0f / sqrtf(static_cast<float>(HD)), 0, 0, 0, 0};
  p.tt = static_cast<size_t>(T) * T;
  p.per_seq = static_cast<size_t>(NH) * p.tt;
  const size_t total = p.per_seq * B;
  const size_t nchunks = std::clamp<size_t>((total + kScratchFloats - 1) / kScratchFloats, 1, B);
  p.chunk = static_cast<int>((B + nchunks - 1) / nchunks);  // balanced chunks
  p.buf = (p.per_seq * p.chunk + 63) / 64 * 64;              // next buffer: 256-B aligned (fp32), 128-B (bf16)
  return p;
}

// n rounded up to a multiple of 128 elements (256 bytes of bf16): keeps the next piece aligned.
size_t pad128(size_t n) { return (n + 127) / 128 * 128; }

thread_local DeviceScratch attn_scratch;       // fp32 T x T buffers
thread_local DeviceScratch attn_bf16_scratch;  // bf16 mode: P (, dS) of a chunk, qkv (, dout)

unsigned row_blocks(size_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

void forward_impl(bool bf16, float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                  int HD) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const Plan p = make_plan(B, T, NH, NKV, HD);
  float* S = attn_scratch.get<float>(p.buf);
  // bf16: [P of a chunk | rounded qkv]
  __nv_bfloat16* Pb = nullptr;
  Operand in{qkv, false}, P{S, false};
  if (bf16) {
    Pb = attn_bf16_scratch.get<__nv_bfloat16>(p.buf + pad128(p.qkv_elems()));
    __nv_bfloat16* qkv_b = Pb + p.buf;
    round_to_bf16_copy(qkv_b, qkv, p.qkv_elems());
    in = {qkv_b, true};
    P = {Pb, true};
  }
  // batch = the NKV groups; strides from group to group: gs in qkv, R heads in S/P and out
  const int R = p.R;
  const long long tt = static_cast<long long>(p.tt), gs = p.gs(), st = R * tt, os = static_cast<long long>(R) * HD;
  for (int b0 = 0; b0 < B; b0 += p.chunk) {
    const int nb = std::min(p.chunk, B - b0);
    // S = scale Q K^T for every head of the chunk (head g R + r at S + (g R + r) T^2)
    for (int i = 0; i < nb; ++i)
      for (int r = 0; r < R; ++r) {
        const int b = b0 + i;
        gemm_batched(bf16, false, true, T, T, HD, p.scale, in.at(p.qkv_off(b, 0, r)), p.ldq(), gs,
                     in.at(p.qkv_off(b, 1)), p.ldq(), gs, 0.0f, S + i * p.per_seq + r * tt, T, st,
                     NKV);
      }
    const size_t rows = static_cast<size_t>(nb) * NH * T;
    float* lse_c = lse + static_cast<size_t>(b0) * NH * T;
    if (bf16)
      causal_softmax_k<true><<<row_blocks(rows), kRowThreads>>>(S, Pb, lse_c, static_cast<int>(rows), T);
    else
      causal_softmax_k<false><<<row_blocks(rows), kRowThreads>>>(S, nullptr, lse_c, static_cast<int>(rows), T);
    check_launch("causal_softmax");
    // O = P V, into out's [B, T, NH, HD] layout
    for (int i = 0; i < nb; ++i)
      for (int r = 0; r < R; ++r) {
        const int b = b0 + i;
        gemm_batched(bf16, false, false, T, HD, T, 1.0f, P.at(i * p.per_seq + r * p.tt), T, st,
                     in.at(p.qkv_off(b, 2)), p.ldq(), gs, 0.0f, out + p.out_off(b, r), p.ldo(), os,
                     NKV);
      }
  }
}

void backward_impl(bool bf16, float* dqkv, const float* dout, const float* qkv, const float* out,
                   const float* lse, int B, int T, int NH, int NKV, int HD) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const Plan p = make_plan(B, T, NH, NKV, HD);
  float* P = attn_scratch.get<float>(2 * p.buf);
  float* dP = P + p.buf;
  // bf16: [P of a chunk | dS of a chunk | rounded qkv | rounded dout]
  __nv_bfloat16 *Pb = nullptr, *dSb = nullptr, *dout_b = nullptr;
  Operand in{qkv, false}, go{dout, false}, Pop{P, false}, dSop{dP, false};
  if (bf16) {
    Pb = attn_bf16_scratch.get<__nv_bfloat16>(2 * p.buf + pad128(p.qkv_elems()) + p.out_elems());
    dSb = Pb + p.buf;
    __nv_bfloat16* qkv_b = dSb + p.buf;
    dout_b = qkv_b + pad128(p.qkv_elems());
    round_to_bf16_copy(qkv_b, qkv, p.qkv_elems());
    round_to_bf16_copy(dout_b, dout, p.out_elems());
    in = {qkv_b, true};
    go = {dout_b, true};
    Pop = {Pb, true};
    dSop = {dSb, true};
  }
  // batch = the NKV groups, as in forward_impl
  const int R = p.R;
  const long long tt = static_cast<long long>(p.tt), gs = p.gs(), st = R * tt, os = static_cast<long long>(R) * HD;
  for (int b0 = 0; b0 < B; b0 += p.chunk) {
    const int nb = std::min(p.chunk, B - b0);
    for (int i = 0; i < nb; ++i)
      for (int r = 0; r < R; ++r) {
        const int b = b0 + i;
        const size_t sc = i * p.per_seq + r * p.tt;
        // S = scale Q K^T (into P), dP = dO V^T
        gemm_batched(bf16, false, true, T, T, HD, p.scale, in.at(p.qkv_off(b, 0, r)), p.ldq(), gs,
                     in.at(p.qkv_off(b, 1)), p.ldq(), gs, 0.0f, P + sc, T, st, NKV);
        gemm_batched(bf16, false, true, T, T, HD, 1.0f, go.at(p.out_off(b, r)), p.ldo(), os,
                     in.at(p.qkv_off(b, 2)), p.ldq(), gs, 0.0f, dP + sc, T, st, NKV);
      }
    const size_t rows = static_cast<size_t>(nb) * NH * T;
    if (bf16)
      softmax_backward_k<__nv_bfloat16><<<row_blocks(rows), kRowThreads>>>(
          P, dP, Pb, dSb, lse, dout_b, out, static_cast<int>(rows), b0 * NH, T, NH, HD);
    else
      softmax_backward_k<float><<<row_blocks(rows), kRowThreads>>>(
          P, dP, nullptr, nullptr, lse, dout, out, static_cast<int>(rows), b0 * NH, T, NH, HD);
    check_launch("attention softmax_backward");
    for (int i = 0; i < nb; ++i)
      for (int r = 0; r < R; ++r) {
        const int b = b0 + i;
        const void* q = in.at(p.qkv_off(b, 0, r));
        const void* k = in.at(p.qkv_off(b, 1));
        const void* Pi = Pop.at(i * p.per_seq + r * p.tt);
        const void* dSi = dSop.at(i * p.per_seq + r * p.tt);
        // dV = P^T dO, dQ = scale dS K, dK = scale dS^T Q: dQ overwrites its slice of dqkv; dV
        // and dK overwrite theirs at r = 0 and accumulate the group's other heads in order
        const float acc = r == 0 ? 0.0f : 1.0f;
        gemm_batched(bf16, true, false, T, HD, T, 1.0f, Pi, T, st, go.at(p.out_off(b, r)), p.ldo(),
                     os, acc, dqkv + p.qkv_off(b, 2), p.ldq(), gs, NKV);
        gemm_batched(bf16, false, false, T, HD, T, p.scale, dSi, T, st, k, p.ldq(), gs, 0.0f,
                     dqkv + p.qkv_off(b, 0, r), p.ldq(), gs, NKV);
        gemm_batched(bf16, true, false, T, HD, T, p.scale, dSi, T, st, q, p.ldq(), gs, acc,
                     dqkv + p.qkv_off(b, 1), p.ldq(), gs, NKV);
      }
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                       int HD) {
  forward_impl(false, out, lse, qkv, B, T, NH, NKV, HD);
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int NH, int NKV, int HD) {
  backward_impl(false, dqkv, dout, qkv, out, lse, B, T, NH, NKV, HD);
}

void attention_forward_bf16(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                            int HD) {
  forward_impl(true, out, lse, qkv, B, T, NH, NKV, HD);
}

void attention_backward_bf16(float* dqkv, const float* dout, const float* qkv, const float* out,
                             const float* lse, int B, int T, int NH, int NKV, int HD) {
  backward_impl(true, dqkv, dout, qkv, out, lse, B, T, NH, NKV, HD);
}

}  // namespace lossytp::cuda
