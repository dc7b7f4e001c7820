// The kernels, run where the data lives: every function takes the Device of its buffers and
// calls its twin in kernels/cpu/ops.h or kernels/cuda/ops.h (same layouts, same accumulate /
// overwrite conventions: read kernels/cpu/ops.h). Model code calls these with the device of its
// ParamStore and never branches on it. A CUDA call in a build without CUDA throws.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernels/device.h"

namespace lossytp::ops {

// Why kernels cannot run on `d` here ("" when they can): a build without CUDA, no GPU visible.
std::string unavailable(Device d);
// Bytes free where a model would live: MemAvailable of /proc/meminfo (CPU; 0 when unknown),
// or the current GPU's free memory.
double available_memory(Device d);

// ---- linear, LayerNorm, GELU, attention
void matmul_forward(Device d, float* out, const float* inp, const float* weight, const float* bias,
                    int N, int C, int OC);
void matmul_backward(Device d, float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int C, int OC);
// bf16 operands (rounded to nearest even), fp32 accumulation and output (--bf16).
void matmul_forward_bf16(Device d, float* out, const float* inp, const float* weight,
                         const float* bias, int N, int C, int OC);
void matmul_backward_bf16(Device d, float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, int N, int C, int OC);
void layernorm_forward(Device d, float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C, float eps = 1e-5f);
void layernorm_backward(Device d, float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C);
void gelu_forward(Device d, float* out, const float* inp, size_t n);
void gelu_backward(Device d, float* dinp, const float* inp, const float* dout, size_t n);
// NH query heads, NKV key/value heads (GQA; NKV = NH: multi-head); qkv in the grouped layout
// [B, T, NKV, NH/NKV + 2, HD] of kernels/cpu/ops.h.
void attention_forward(Device d, float* out, float* lse, const float* qkv, int B, int T, int NH,
                       int NKV, int HD);
void attention_backward(Device d, float* dqkv, const float* dout, const float* qkv,
                        const float* out, const float* lse, int B, int T, int NH, int NKV, int HD);
// Blockwise causal attention by global positions, for context parallelism (kernels/cpu/ops.h);
// CPU only so far: a CUDA buffer throws std::runtime_error ("not yet implemented on CUDA").
void attention_block_forward(Device d, float* o, float* lse, const float* q, const float* k,
                             const float* v, int B, int NH, int NKV, int Tq, int Tk, int HD,
                             int q_pos, int k_pos);
void attention_merge(Device d, float* o, float* lse, const float* o2, const float* lse2,
                     size_t rows, int HD);
void attention_delta(Device d, float* delta, const float* dout, const float* o, size_t rows,
                     int HD);
void attention_block_backward(Device d, float* dq, float* dk, float* dv, const float* q,
                              const float* k, const float* v, const float* dout, const float* lse,
                              const float* delta, int B, int NH, int NKV, int Tq, int Tk, int HD,
                              int q_pos, int k_pos);
// Semigroup attention (kernels/cpu/ops.h, kernels/cuda/ops.h). On every device the ESR's
// per-head constants (tau, logw, hbeta, oscale) and the double* gradients are HOST memory.
void semigroup_attention_forward(Device d, float* y, float* o, float* lse, const float* qkv, int B,
                                 int T, int NH, int HD, float t, float c);
void semigroup_attention_backward(Device d, float* dqkv, double* dt, double* dc, const float* dy,
                                  const float* qkv, const float* o, const float* lse, int B, int T,
                                  int NH, int HD, float t, float c);
void semigroup_esr_forward(Device d, float* y, float* u, float* w2, float* lse, float* rstd, float* qkvg,
                           const float* tau, const float* logw, const float* hbeta, const float* oscale,
                           float lam, float alpha, int B, int T, int NH, int HD, int Nt);
void semigroup_esr_backward(Device d, float* dqkvg, double* g_lam, double* g_logtau, double* g_logw,
                            double* g_hbeta, double* g_oscale, const float* dy, const float* qkvg,
                            const float* rstd, const float* u, const float* w2, const float* lse,
                            const float* tau, const float* logw, const float* hbeta, const float* oscale,
                            float lam, float alpha, int B, int T, int NH, int HD, int Nt);
// bf16 GEMM operands (q, k, v, dout; on the GPU also P and dS), fp32 softmax and outputs (--bf16).
void attention_forward_bf16(Device d, float* out, float* lse, const float* qkv, int B, int T,
                            int NH, int NKV, int HD);
void attention_backward_bf16(Device d, float* dqkv, const float* dout, const float* qkv,
                             const float* out, const float* lse, int B, int T, int NH, int NKV,
                             int HD);
// The multi-head forms (NKV = NH, qkv [B, T, NH, 3, HD]), for callers without GQA.
inline void attention_forward(Device d, float* out, float* lse, const float* qkv, int B, int T,
                              int NH, int HD) {
  attention_forward(d, out, lse, qkv, B, T, NH, NH, HD);
}
inline void attention_backward(Device d, float* dqkv, const float* dout, const float* qkv,
                               const float* out, const float* lse, int B, int T, int NH, int HD) {
  attention_backward(d, dqkv, dout, qkv, out, lse, B, T, NH, NH, HD);
}
inline void attention_forward_bf16(Device d, float* out, float* lse, const float* qkv, int B,
                                   int T, int NH, int HD) {
  attention_forward_bf16(d, out, lse, qkv, B, T, NH, NH, HD);
}
inline void attention_backward_bf16(Device d, float* dqkv, const float* dout, const float* qkv,
                                    const float* out, const float* lse, int B, int T, int NH,
                                    int HD) {
  attention_backward_bf16(d, dqkv, dout, qkv, out, lse, B, T, NH, NH, HD);
}

// ---- embeddings, vocab-parallel cross-entropy
void embedding_forward(Device d, float* out, const int32_t* tok, const float* table, int N, int C,
                       int vocab_start, int V);
void embedding_backward(Device d, float* dtable, const int32_t* tok, const float* dout, int N,
                        int C, int vocab_start, int V);
void position_forward(Device d, float* out, const float* pos, int B, int T, int C);
void position_backward(Device d, float* dpos, const float* dout, int B, int T, int C);
void ce_local_max(Device d, float* row_max, const float* logits, int N, int V);
void ce_local_target(Device d, float* target_logit, const float* logits, const int32_t* tgt,
                     int N, int V, int vocab_start);
void ce_local_exp_sum(Device d, float* sum_exp, float* logits, const float* row_max, int N, int V);
void ce_losses(Device d, float* losses, const float* row_max, const float* sum_exp,
               const float* target_logit, const int32_t* tgt, int N);
void ce_backward_inplace(Device d, float* logits, const float* sum_exp, const int32_t* tgt,
                         const float* dloss, int N, int V, int vocab_start);

// ---- optimizer
void adamw_update(Device d, float* param, const float* grad, float* m, float* v, size_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t);

// ---- rows and columns (bias after a reduce, CAAT-Net's partial synchronisation)
// y[n, c] += b[c] for y [N, C].
void bias_add(Device d, float* y, const float* b, int N, int C);
// db[c] += sum_n dy[n, c] (rows in order).
void bias_grad(Device d, float* db, const float* dy, int N, int C);
// dst[n, 0:w] = src[n, 0:w] for N rows; row strides ldd and lds (floats).
void copy_cols(Device d, float* dst, int ldd, const float* src, int lds, int N, int w);
// x[n, c] *= s for c in [c0, C), x [N, C].
void scale_cols(Device d, float* x, int N, int C, int c0, float s);
// x[n * ld + c] = v for n < N, c in [c0, c1) (padded vocabulary logits).
void fill_cols(Device d, float* x, int N, int ld, int c0, int c1, float v);

// ---- Llama: RMSNorm, rotary embedding (in place on the grouped qkv), SwiGLU
void rmsnorm_forward(Device d, float* out, float* rstd, const float* inp, const float* weight,
                     int N, int C, float eps);
void rmsnorm_backward(Device d, float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int N, int C);
void rope_forward(Device d, float* qkv, const float* cos, const float* sin, int B, int T, int NH,
                  int NKV, int HD, int rot_dim);
void rope_backward(Device d, float* dqkv, const float* cos, const float* sin, int B, int T, int NH,
                   int NKV, int HD, int rot_dim);
void swiglu_forward(Device d, float* out, const float* inp, int N, int F);
void swiglu_backward(Device d, float* dinp, const float* inp, const float* dout, int N, int F);

// ---- vectors
void copy(Device d, float* dst, const float* src, size_t n);
void fill(Device d, float* x, float v, size_t n);
void scale_inplace(Device d, float* x, float s, size_t n);
void add_inplace(Device d, float* y, const float* x, size_t n);   // y += x
void max_inplace(Device d, float* y, const float* x, size_t n);   // y = max(y, x)
// Sum of x[0:n] in double, as a host value (on CUDA: one device-to-host copy). Fixed order.
double sum(Device d, const float* x, size_t n);
// Sum of squares over several spans, in double, as a host value (on CUDA: one device-to-host
// copy for all spans). Fixed order: the same result on every run.
double sum_squares(Device d, const std::vector<std::pair<const float*, size_t>>& spans);
// Randomized Hadamard transform of a payload in blocks of `block` floats (kernels/cpu/ops.h),
// signs keyed by `key`; decode(encode(x)) = x. CPU only so far: a CUDA buffer throws
// std::runtime_error ("encode=hadamard is not yet implemented on CUDA").
void hadamard_encode(Device d, float* x, size_t n, size_t block, uint64_t key);
void hadamard_decode(Device d, float* x, size_t n, size_t block, uint64_t key);

}  // namespace lossytp::ops
