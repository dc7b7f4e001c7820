// CPU kernels: the arithmetic of one rank, on raw row-major fp32 buffers.
// Conventions, shared by every function here:
//  - activations are [N, C] row-major with N = B*T tokens; weights are [OC, C] (out, in) as in
//    Megatron and llm.c, so a linear layer is out = inp @ W^T + b;
//  - every forward has its backward next to it;
//  - parameter gradients ACCUMULATE (+=) so micro-batches can be summed without a copy;
//  - input gradients: functions say whether they overwrite (=) or accumulate (+=);
//  - loops are parallelised with OpenMP over the current thread count; GEMMs use the BLAS
//    threads (set_num_threads sets both).
// kernels/ depends on nothing else of lossytp.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lossytp::cpu {

// Threads for OpenMP loops and BLAS.
void set_num_threads(int n);
int num_threads();
// Name of the GEMM implementation in use ("openblas" or "eigen"), for logs and benchmarks.
const char* gemm_backend_name();

// C[M,N] = alpha * op(A) @ op(B) + beta * C, all row-major; op(X) = X^T when trans is set.
// lda/ldb/ldc are row strides of the stored (untransposed) matrices.
void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);

// ---- linear: out[N,OC] = inp[N,C] @ weight[OC,C]^T (+ bias[OC] if bias != nullptr)
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC);
// dinp[N,C] = dout @ weight (OVERWRITES; pass dinp = nullptr to skip);
// dweight[OC,C] += dout^T @ inp; dbias[OC] += sum_n dout (skipped when nullptr).
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int C, int OC);

// ---- LayerNorm over the last dim (GPT-2: eps = 1e-5); mean/rstd[N] are saved for the backward.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C, float eps);
// dinp (ACCUMULATES, +=), dweight/dbias (+=).
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C);

// ---- GELU, tanh approximation (GPT-2's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
void gelu_forward(float* out, const float* inp, size_t n);
// dinp = gelu'(inp) * dout (OVERWRITES). dinp may alias dout.
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);

// ---- causal self-attention, fused (flash-attention style), multi-head or grouped-query (GQA):
// NH query heads, NKV key/value heads (query groups), NH % NKV == 0 (else std::invalid_argument);
// query head h uses the k and v of group h / (NH / NKV). NKV = NH is multi-head attention.
// qkv: [B, T, NKV, NH/NKV + 2, HD] -- Megatron's grouped fused QKV: for every token and group,
//   the group's NH/NKV q vectors, then its k, then its v, HD floats each ((NH + 2 NKV) HD floats
//   a token). With NKV = NH this is [B, T, NH, 3, HD]: per head its q, k and v.
// out: [B, T, NH, HD]; lse: [B, NH, T] log-sum-exp of each softmax row, saved for the backward.
// Scale 1/sqrt(HD). Never materialises a T x T matrix per head beyond a tile, nor K/V per head.
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                       int HD);
// dqkv: like qkv (OVERWRITES); a group's dk and dv are sums over its query heads (fixed order).
// Recomputes probabilities tile by tile from lse.
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int NH, int NKV, int HD);

// ---- blockwise causal attention by global positions (kernels/cpu/attention_blocks.cpp), the
// building block of context parallelism (models/context_parallel.*).
// Layouts are head-major and contiguous: q [B, NH, Tq, HD]; k, v [B, NKV, Tk, HD]; o [B, NH, Tq, HD];
// lse, delta [B, NH, Tq]. GQA: query head h uses K/V head h / (NH / NKV) (NH % NKV != 0:
// std::invalid_argument). Query row i has global position q_pos + i, key row j has k_pos + j; key j
// is visible to query i iff k_pos + j <= q_pos + i (causal). Scale 1/sqrt(HD). Results do not
// depend on the thread count.
// o, lse (OVERWRITTEN) = softmax attention of the block (o normalised within the block, lse = log sum
// exp of the scaled scores over the visible keys). A query row with no visible key gets o = 0 and
// lse = -infinity.
void attention_block_forward(float* o, float* lse, const float* q, const float* k, const float* v, int B,
                             int NH, int NKV, int Tq, int Tk, int HD, int q_pos, int k_pos);
// Merges a block's (o2, lse2) into the running (o, lse), in place: lse = log(e^lse + e^lse2),
// o = (e^(lse_old - lse) o + e^(lse2 - lse) o2). Either side may be -infinity (then the other is kept
// exactly). rows = B * NH * Tq.
void attention_merge(float* o, float* lse, const float* o2, const float* lse2, size_t rows, int HD);
// delta[r] = sum_d dout[r, d] * o[r, d] (OVERWRITES; rows = B * NH * Tq), the D of the flash backward.
void attention_delta(float* delta, const float* dout, const float* o, size_t rows, int HD);
// Gradients of the FULL attention's loss restricted to this block's keys, given the full (merged) lse
// and delta of each query row: P = exp(q k^T / sqrt(HD) - lse) on visible keys, dv += P^T dout,
// dP = dout v^T, dS = P * (dP - delta), dq += dS k / sqrt(HD), dk += dS^T q / sqrt(HD).
// ACCUMULATES into dq [B, NH, Tq, HD], dk, dv [B, NKV, Tk, HD] (GQA: the heads of a group summed in
// head order, then added). Rows whose lse is -infinity contribute nothing.
void attention_block_backward(float* dq, float* dk, float* dv, const float* q, const float* k,
                              const float* v, const float* dout, const float* lse, const float* delta,
                              int B, int NH, int NKV, int Tq, int Tk, int HD, int q_pos, int k_pos);

// ---- semigroup attention, generator step (kernels/cpu/semigroup_attention.cpp):
//   o = P v with P = causal softmax(q k^T / sqrt(HD) - c |i - j|), y = (1 - t) v + t o.
// qkv: [B, T, 3, NH, HD] (block-major [Q | K | V], each block NH heads of HD); y, o: [B, T, NH, HD]
// (OVERWRITTEN); lse: [B, NH, T]. Flash-style over key tiles: no T x T matrix per head.
void semigroup_attention_forward(float* y, float* o, float* lse, const float* qkv, int B, int T,
                                 int NH, int HD, float t, float c);
// dqkv: like qkv (OVERWRITTEN); *dt += dL/dt, *dc += dL/dc (sums over this call's heads, in
// double, in a fixed order). o and lse from the forward.
void semigroup_attention_backward(float* dqkv, double* dt, double* dc, const float* dy,
                                  const float* qkv, const float* o, const float* lse, int B, int T,
                                  int NH, int HD, float t, float c);

// ---- semigroup attention, v1 "ESR" (kernels/cpu/semigroup_esr_attention.cpp):
//   g~ = whiten(g), z = lam q.k 0.8/sqrt(HD) + (1-lam) ln sum_t w'_t (1 + |g~_i-g~_j|^2/(4 tau_t))^-hb,
//   P = causal softmax(z), u = P v, w2 = P u, y = os ((1 - alpha) u + alpha w2).
// qkvg: [B, T, NH, 4, HD] (per head q, k, v, g); its g is WHITENED IN PLACE (the backward reads
// g~). y, u, w2: [B, T, NH, HD], lse: [B, NH, T], rstd: [B, T, NH] (OVERWRITTEN). Per head:
// tau, logw [NH, Nt] (tau_t and ln(w_t + 1e-12)), hbeta (beta / 2), oscale [NH]. One pass over
// the query rows (blocks of 4) with O(T) row buffers: no T x T matrix; P^2 v from the same logits.
void semigroup_esr_forward(float* y, float* u, float* w2, float* lse, float* rstd, float* qkvg,
                           const float* tau, const float* logw, const float* hbeta,
                           const float* oscale, float lam, float alpha, int B, int T, int NH,
                           int HD, int Nt);
// dqkvg: like qkvg (OVERWRITTEN; the g part is the gradient at the un-whitened g). ACCUMULATES
// (double, fixed order) g_lam += dL/dlam (the blend weight, not its logit), g_logtau [NH, Nt] +=
// dL/dln tau, g_logw [NH, Nt] += dL/dln(w + 1e-12), g_hbeta [NH] += dL/d(beta/2), g_oscale [NH].
void semigroup_esr_backward(float* dqkvg, double* g_lam, double* g_logtau, double* g_logw,
                            double* g_hbeta, double* g_oscale, const float* dy, const float* qkvg,
                            const float* rstd, const float* u, const float* w2, const float* lse,
                            const float* tau, const float* logw, const float* hbeta,
                            const float* oscale, float lam, float alpha, int B, int T, int NH,
                            int HD, int Nt);

// ---- embeddings
// Vocab-parallel lookup: this rank owns rows [vocab_start, vocab_start + V) of the table.
// out[n,:] = table[tok[n] - vocab_start, :] when the token is owned, else 0 (OVERWRITES).
void embedding_forward(float* out, const int32_t* tok, const float* table, int N, int C,
                       int vocab_start, int V);
// dtable[tok[n] - vocab_start, :] += dout[n, :] for owned tokens.
void embedding_backward(float* dtable, const int32_t* tok, const float* dout, int N, int C,
                        int vocab_start, int V);
// Learned positions: out[b,t,:] += pos[t,:] for out of shape [B,T,C].
void position_forward(float* out, const float* pos, int B, int T, int C);
// dpos[t,:] += sum_b dout[b,t,:].
void position_backward(float* dpos, const float* dout, int B, int T, int C);

// ---- vocab-parallel cross-entropy, the local halves of Megatron's three all-reduces.
// logits: [N, V] is this rank's vocab shard, columns = tokens [vocab_start, vocab_start + V).
// Step 1: row_max[n] = max_v logits[n,v].                       (then all-reduce MAX)
void ce_local_max(float* row_max, const float* logits, int N, int V);
// Step 2: target_logit[n] = logits[n, tgt[n]-vocab_start] if owned, else 0.   (all-reduce SUM)
void ce_local_target(float* target_logit, const float* logits, const int32_t* tgt, int N, int V,
                     int vocab_start);
// Step 3: logits[n,v] <- exp(logits[n,v] - row_max[n]) IN PLACE; sum_exp[n] = row sum. (SUM)
void ce_local_exp_sum(float* sum_exp, float* logits, const float* row_max, int N, int V);
// Loss per row: losses[n] = log(sum_exp[n]) + row_max[n] - target_logit[n]; 0 where tgt[n] < 0
// (an ignored target: masked out of the loss, e.g. a prompt token in supervised fine-tuning).
void ce_losses(float* losses, const float* row_max, const float* sum_exp,
               const float* target_logit, const int32_t* tgt, int N);
// Backward, in place on the exponentials left by step 3:
// logits[n,v] <- (exp[n,v] / sum_exp[n] - [v == tgt[n]-vocab_start]) * dloss[n].
// Rows with tgt[n] < 0 (ignored) get zero gradient.
void ce_backward_inplace(float* logits, const float* sum_exp, const int32_t* tgt,
                         const float* dloss, int N, int V, int vocab_start);

// ---- AdamW (decoupled weight decay, bias-corrected), t = step number starting at 1.
void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t t);

// ---- small vector helpers used by the trainer
// sum of squares, in double for accuracy.
double sum_squares(const float* x, size_t n);
void scale_inplace(float* x, float s, size_t n);
// y += x
void add_inplace(float* y, const float* x, size_t n);
// y = max(y, x)
void max_inplace(float* y, const float* x, size_t n);
// sum of x in double, fixed order.
double sum(const float* x, size_t n);

// ---- rows and columns
// y[n, c] += b[c] for y [N, C] (a bias added after a reduce).
void bias_add(float* y, const float* b, int N, int C);
// db[c] += sum_n dy[n, c], rows in order.
void bias_grad(float* db, const float* dy, int N, int C);
// dst[n, 0:w] = src[n, 0:w] for N rows with row strides ldd and lds.
void copy_cols(float* dst, int ldd, const float* src, int lds, int N, int w);
// x[n, c] *= s for c in [c0, C).
void scale_cols(float* x, int N, int C, int c0, float s);
// x[n * ld + c] = v for n < N, c in [c0, c1) (masks the padded vocabulary columns of logits).
void fill_cols(float* x, int N, int ld, int c0, int c1, float v);

// ---- Llama: RMSNorm, rotary embedding, SwiGLU (kernels/cpu/rmsnorm.cpp, rope.cpp, swiglu.cpp)
// RMSNorm over the last dim: out = inp * rstd * weight, rstd[n] = 1 / sqrt(mean_c(inp^2) + eps),
// saved for the backward. No bias, no mean subtraction.
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C,
                     float eps);
// dinp (ACCUMULATES, +=), dweight (+=; rows summed in a fixed order, thread-count independent).
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int N, int C);
// Rotary embedding (rotate-half convention of Megatron / Hugging Face), IN PLACE on a fused qkv
// in Megatron's grouped layout: per token [NKV groups][NH/NKV q heads, 1 k head, 1 v head][HD],
// (NH + 2 NKV) HD floats; token (b, t) starts at (b T + t)(NH + 2 NKV) HD. NKV == NH gives
// [NH][q, k, v][HD]. cos, sin: [T, rot_dim/2], row t for the token at position t. On every q and
// k head (not v), for i < h = rot_dim/2: (x[i], x[i+h]) <- (x[i] c - x[i+h] s, x[i+h] c + x[i] s)
// with c = cos[t, i], s = sin[t, i]; channels [rot_dim, HD) untouched. Needs NH % NKV == 0,
// rot_dim even and <= HD.
void rope_forward(float* qkv, const float* cos, const float* sin, int B, int T, int NH, int NKV,
                  int HD, int rot_dim);
// The transpose (inverse) rotation, in place on the q and k gradients of dqkv (same layout);
// v gradients untouched.
void rope_backward(float* dqkv, const float* cos, const float* sin, int B, int T, int NH, int NKV,
                   int HD, int rot_dim);
// SwiGLU (Megatron's glu): inp [N, 2F], rows [gate (F) | up (F)]; out [N, F] = silu(gate) * up
// with silu(g) = g / (1 + exp(-g)) (OVERWRITES).
void swiglu_forward(float* out, const float* inp, int N, int F);
// dinp [N, 2F] (OVERWRITES): dgate = dout * up * silu'(gate), dup = dout * silu(gate).
void swiglu_backward(float* dinp, const float* inp, const float* dout, int N, int F);

}  // namespace lossytp::cpu

// ==== bf16 GEMMs (kernels/cpu/matmul_bf16.cpp) ====================================================
namespace lossytp::cpu {

// The linear layer with bf16 GEMM operands, for --bf16 (fp32 master weights and activations).
// Same signatures, layouts and accumulate/overwrite conventions as matmul_forward/backward: out
// and dinp (nullptr: skipped) are overwritten, dweight (nullptr: skipped) and dbias (nullptr:
// skipped) accumulate. Every GEMM operand (inp, weight, dout) is first rounded to bf16 (round to
// nearest even, kernels/bf16.h), products accumulate in fp32 and results are fp32. Bias and dbias
// stay fp32: dbias sums the unrounded dout. Bit-identical to matmul_forward/backward called on
// pre-rounded operands (the same sgemm).
void matmul_forward_bf16(float* out, const float* inp, const float* weight, const float* bias,
                         int N, int C, int OC);
void matmul_backward_bf16(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, int N, int C, int OC);

}  // namespace lossytp::cpu
// ==== end of bf16 GEMMs ===========================================================================

// ==== bf16 attention (kernels/cpu/attention_bf16.cpp) =============================================
namespace lossytp::cpu {

// attention_forward/attention_backward (same signatures, layouts, dqkv OVERWRITTEN) for --bf16 on
// the CPU, the comparison path for the GPU's bf16 attention (kernels/cuda/attention.cu). An
// emulation: qkv and dout are rounded to bf16 (kernels/bf16.h) and the fp32 fused attention runs
// on the rounded copies (bit-identical to attention_forward/backward on pre-rounded inputs). The
// probabilities P and dS, which the GPU also rounds before its GEMMs, live inside the fused
// kernel's tiles and stay fp32 here, so the two agree within bf16 rounding, not bit for bit.
void attention_forward_bf16(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                            int HD);
void attention_backward_bf16(float* dqkv, const float* dout, const float* qkv, const float* out,
                             const float* lse, int B, int T, int NH, int NKV, int HD);

}  // namespace lossytp::cpu
// ==== end of bf16 attention =======================================================================

// ==== randomized Hadamard transform (kernels/cpu/hadamard.cpp) ====================================
namespace lossytp::cpu {

// encode=hadamard of --net (docs/netmodels.md). x[0:n] is cut into blocks from offset 0: whole
// blocks of `block` floats (a power of two), then the tail (n % block) into power-of-two blocks by
// its binary digits, largest first (1000 = 512+256+128+64+32+8): no padding, every element mixed
// except that a tail's last blocks are short. hadamard_next_block: the length of the block that
// starts with `remaining` floats left.
size_t hadamard_next_block(size_t remaining, size_t block);
// Orthonormal fast Walsh-Hadamard transform H/sqrt(len) of every block, in place; its own inverse.
// O(n log block); throws std::invalid_argument unless block is a power of two.
void hadamard_transform(float* x, size_t n, size_t block);
// x[i] *= s_i, s_i = +-1 from Philox keyed by `key` (bit i%32 of word i/32): exact, its own inverse.
void hadamard_signs(float* x, size_t n, uint64_t key);
// encode = transform(signs(x)); decode = signs(transform(x)): decode(encode(x)) = x to rounding.
void hadamard_encode(float* x, size_t n, size_t block, uint64_t key);
void hadamard_decode(float* x, size_t n, size_t block, uint64_t key);

}  // namespace lossytp::cpu
// ==== end of randomized Hadamard transform ========================================================
