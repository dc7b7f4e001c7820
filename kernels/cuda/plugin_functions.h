// The one list of kernels/cuda/ops.h's functions that the GPU plugin (liblossytp_cuda.so) exports
// to the core. The core (kernels/cuda_plugin.cpp) defines each as a trampoline into the plugin,
// which is opened with dlopen the first time one is called; the plugin
// (kernels/cuda/plugin_table.cpp) fills the table from its definitions. Adding a function to
// kernels/cuda/ops.h that the core or the tests call: add its entry here (a function missing from
// the list is an undefined reference when lossytp links).
//   X(return type, name, (parameters), (arguments))
//   Q(...same..., value returned when the plugin cannot be loaded): queries that answer "no GPU"
//   instead of throwing.
#pragma once
#include "kernels/cuda/ops.h"

#define LOSSYTP_CUDA_PLUGIN_FUNCTIONS(X, Q)                                                        \
  Q(bool, device_available, (), (), false)                                                         \
  Q(int, device_count, (), (), 0)                                                                  \
  X(std::string, device_name, (), ())                                                              \
  X(void*, alloc, (size_t bytes), (bytes))                                                         \
  X(void, free, (void* p), (p))                                                                    \
  X(void, to_device, (void* dst, const void* src, size_t bytes), (dst, src, bytes))                \
  X(void, to_host, (void* dst, const void* src, size_t bytes), (dst, src, bytes))                  \
  X(void, synchronize, (), ())                                                                     \
  X(size_t, free_memory_bytes, (), ())                                                             \
  X(void, set_device, (int device), (device))                                                      \
  X(int, current_device, (), ())                                                                   \
  X(void, copy_bytes, (void* dst, const void* src, size_t bytes), (dst, src, bytes))               \
  X(void, memset_bytes, (void* p, int value, size_t bytes), (p, value, bytes))                     \
  X(void, sgemm, (bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,     \
                  const float* B, int ldb, float beta, float* C, int ldc),                         \
    (ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))                                        \
  X(void, matmul_forward, (float* out, const float* inp, const float* weight, const float* bias,   \
                           int N, int C, int OC), (out, inp, weight, bias, N, C, OC))              \
  X(void, matmul_backward, (float* dinp, float* dweight, float* dbias, const float* dout,          \
                            const float* inp, const float* weight, int N, int C, int OC),          \
    (dinp, dweight, dbias, dout, inp, weight, N, C, OC))                                           \
  X(void, layernorm_forward, (float* out, float* mean, float* rstd, const float* inp,              \
                              const float* weight, const float* bias, int N, int C, float eps),    \
    (out, mean, rstd, inp, weight, bias, N, C, eps))                                               \
  X(void, layernorm_backward, (float* dinp, float* dweight, float* dbias, const float* dout,       \
                               const float* inp, const float* weight, const float* mean,           \
                               const float* rstd, int N, int C),                                   \
    (dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C))                                   \
  X(void, gelu_forward, (float* out, const float* inp, size_t n), (out, inp, n))                   \
  X(void, gelu_backward, (float* dinp, const float* inp, const float* dout, size_t n),             \
    (dinp, inp, dout, n))                                                                          \
  X(void, attention_forward, (float* out, float* lse, const float* qkv, int B, int T, int NH,      \
                              int NKV, int HD), (out, lse, qkv, B, T, NH, NKV, HD))                \
  X(void, attention_backward, (float* dqkv, const float* dout, const float* qkv, const float* out, \
                               const float* lse, int B, int T, int NH, int NKV, int HD),           \
    (dqkv, dout, qkv, out, lse, B, T, NH, NKV, HD))                                                \
  X(void, semigroup_attention_forward, (float* y, float* o, float* lse, const float* qkv, int B,   \
                                        int T, int NH, int HD, float t, float c),                  \
    (y, o, lse, qkv, B, T, NH, HD, t, c))                                                          \
  X(void, semigroup_attention_backward, (float* dqkv, double* dt, double* dc, const float* dy,     \
                                         const float* qkv, const float* o, const float* lse,       \
                                         int B, int T, int NH, int HD, float t, float c),          \
    (dqkv, dt, dc, dy, qkv, o, lse, B, T, NH, HD, t, c))                                           \
  X(void, semigroup_esr_forward, (float* y, float* u, float* w2, float* lse, float* rstd,          \
                                  float* qkvg, const float* tau, const float* logw,                \
                                  const float* hbeta, const float* oscale, float lam, float alpha, \
                                  int B, int T, int NH, int HD, int Nt),                           \
    (y, u, w2, lse, rstd, qkvg, tau, logw, hbeta, oscale, lam, alpha, B, T, NH, HD, Nt))           \
  X(void, semigroup_esr_backward, (float* dqkvg, double* g_lam, double* g_logtau, double* g_logw,  \
                                   double* g_hbeta, double* g_oscale, const float* dy,             \
                                   const float* qkvg, const float* rstd, const float* u,           \
                                   const float* w2, const float* lse, const float* tau,            \
                                   const float* logw, const float* hbeta, const float* oscale,     \
                                   float lam, float alpha, int B, int T, int NH, int HD, int Nt),  \
    (dqkvg, g_lam, g_logtau, g_logw, g_hbeta, g_oscale, dy, qkvg, rstd, u, w2, lse, tau, logw,     \
     hbeta, oscale, lam, alpha, B, T, NH, HD, Nt))                                                 \
  X(void, embedding_forward, (float* out, const int32_t* tok, const float* table, int N, int C,    \
                              int vocab_start, int V), (out, tok, table, N, C, vocab_start, V))    \
  X(void, embedding_backward, (float* dtable, const int32_t* tok, const float* dout, int N, int C, \
                               int vocab_start, int V),                                            \
    (dtable, tok, dout, N, C, vocab_start, V))                                                     \
  X(void, position_forward, (float* out, const float* pos, int B, int T, int C),                   \
    (out, pos, B, T, C))                                                                           \
  X(void, position_backward, (float* dpos, const float* dout, int B, int T, int C),                \
    (dpos, dout, B, T, C))                                                                         \
  X(void, ce_local_max, (float* row_max, const float* logits, int N, int V),                       \
    (row_max, logits, N, V))                                                                       \
  X(void, ce_local_target, (float* target_logit, const float* logits, const int32_t* tgt, int N,   \
                            int V, int vocab_start),                                               \
    (target_logit, logits, tgt, N, V, vocab_start))                                                \
  X(void, ce_local_exp_sum, (float* sum_exp, float* logits, const float* row_max, int N, int V),   \
    (sum_exp, logits, row_max, N, V))                                                              \
  X(void, ce_losses, (float* losses, const float* row_max, const float* sum_exp,                   \
                      const float* target_logit, const int32_t* tgt, int N),                       \
    (losses, row_max, sum_exp, target_logit, tgt, N))                                              \
  X(void, ce_backward_inplace, (float* logits, const float* sum_exp, const int32_t* tgt,           \
                                const float* dloss, int N, int V, int vocab_start),                \
    (logits, sum_exp, tgt, dloss, N, V, vocab_start))                                              \
  X(void, adamw_update, (float* param, const float* grad, float* m, float* v, size_t n, float lr,  \
                         float beta1, float beta2, float eps, float weight_decay, int64_t t),      \
    (param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t))                                \
  X(void, copy, (float* dst, const float* src, size_t n), (dst, src, n))                           \
  X(void, fill, (float* x, float v, size_t n), (x, v, n))                                          \
  X(void, scale_inplace, (float* x, float s, size_t n), (x, s, n))                                 \
  X(void, add_inplace, (float* y, const float* x, size_t n), (y, x, n))                            \
  X(void, max_inplace, (float* y, const float* x, size_t n), (y, x, n))                            \
  X(void, bias_add, (float* y, const float* b, int N, int C), (y, b, N, C))                        \
  X(void, bias_grad, (float* db, const float* dy, int N, int C), (db, dy, N, C))                   \
  X(void, copy_cols, (float* dst, int ldd, const float* src, int lds, int N, int w),               \
    (dst, ldd, src, lds, N, w))                                                                    \
  X(void, scale_cols, (float* x, int N, int C, int c0, float s), (x, N, C, c0, s))                 \
  X(void, fill_cols, (float* x, int N, int ld, int c0, int c1, float v), (x, N, ld, c0, c1, v))    \
  X(double, sum, (const float* x, size_t n), (x, n))                                               \
  X(double, sum_squares, (const std::vector<std::pair<const float*, size_t>>& spans), (spans))     \
  X(void, rmsnorm_forward, (float* out, float* rstd, const float* inp, const float* weight, int N, \
                            int C, float eps), (out, rstd, inp, weight, N, C, eps))                \
  X(void, rmsnorm_backward, (float* dinp, float* dweight, const float* dout, const float* inp,     \
                             const float* weight, const float* rstd, int N, int C),                \
    (dinp, dweight, dout, inp, weight, rstd, N, C))                                                \
  X(void, rope_forward, (float* qkv, const float* cos, const float* sin, int B, int T, int NH,     \
                         int NKV, int HD, int rot_dim), (qkv, cos, sin, B, T, NH, NKV, HD, rot_dim)) \
  X(void, rope_backward, (float* dqkv, const float* cos, const float* sin, int B, int T, int NH,   \
                          int NKV, int HD, int rot_dim),                                           \
    (dqkv, cos, sin, B, T, NH, NKV, HD, rot_dim))                                                  \
  X(void, swiglu_forward, (float* out, const float* inp, int N, int F), (out, inp, N, F))          \
  X(void, swiglu_backward, (float* dinp, const float* inp, const float* dout, int N, int F),       \
    (dinp, inp, dout, N, F))                                                                       \
  X(void, iid_mask, (const net::PacketStream& s, uint32_t lane, uint64_t t, size_t n,              \
                     uint8_t* lost), (s, lane, t, n, lost))                                        \
  X(void, ge_packet_mask, (const net::PacketStream& s, uint64_t t_pi, uint64_t t_gb,               \
                           uint64_t t_bg, uint64_t t_loss_good, uint64_t t_loss_bad, size_t n,     \
                           uint8_t* lost), (s, t_pi, t_gb, t_bg, t_loss_good, t_loss_bad, n, lost)) \
  X(void, apply_delivery, (float* own, const float* recv, size_t len, const uint8_t* mask,         \
                           size_t elems_per_packet, int fill, bool reduce, bool max_op,            \
                           float rescale, float* stale),                                           \
    (own, recv, len, mask, elems_per_packet, fill, reduce, max_op, rescale, stale))                \
  X(void, matmul_forward_bf16, (float* out, const float* inp, const float* weight,                 \
                                const float* bias, int N, int C, int OC),                          \
    (out, inp, weight, bias, N, C, OC))                                                            \
  X(void, matmul_backward_bf16, (float* dinp, float* dweight, float* dbias, const float* dout,     \
                                 const float* inp, const float* weight, int N, int C, int OC),     \
    (dinp, dweight, dbias, dout, inp, weight, N, C, OC))                                           \
  X(void, attention_forward_bf16, (float* out, float* lse, const float* qkv, int B, int T, int NH, \
                                   int NKV, int HD), (out, lse, qkv, B, T, NH, NKV, HD))           \
  X(void, attention_backward_bf16, (float* dqkv, const float* dout, const float* qkv,              \
                                    const float* out, const float* lse, int B, int T, int NH,      \
                                    int NKV, int HD),                                              \
    (dqkv, dout, qkv, out, lse, B, T, NH, NKV, HD))                                                \
  X(void, bf16_round_inplace, (float* x, size_t n), (x, n))

namespace lossytp::cuda {

// What the plugin hands the core: a pointer to each listed function, and the list's text, which
// the core compares with its own so that a plugin from another revision is refused, not called.
struct PluginTable {
  const char* signature;
#define LOSSYTP_CUDA_PLUGIN_SLOT(R, name, params, args) R(*name) params;
#define LOSSYTP_CUDA_PLUGIN_QSLOT(R, name, params, args, fallback) R(*name) params;
  LOSSYTP_CUDA_PLUGIN_FUNCTIONS(LOSSYTP_CUDA_PLUGIN_SLOT, LOSSYTP_CUDA_PLUGIN_QSLOT)
#undef LOSSYTP_CUDA_PLUGIN_SLOT
#undef LOSSYTP_CUDA_PLUGIN_QSLOT
};

#define LOSSYTP_CUDA_PLUGIN_SIG(R, name, params, args) #R " " #name #params ";"
#define LOSSYTP_CUDA_PLUGIN_QSIG(R, name, params, args, fallback) #R " " #name #params ";"
inline constexpr const char* kPluginSignature =
    LOSSYTP_CUDA_PLUGIN_FUNCTIONS(LOSSYTP_CUDA_PLUGIN_SIG, LOSSYTP_CUDA_PLUGIN_QSIG);
#undef LOSSYTP_CUDA_PLUGIN_SIG
#undef LOSSYTP_CUDA_PLUGIN_QSIG

}  // namespace lossytp::cuda

// The plugin's entry point (C linkage: dlsym finds it by this name).
#define LOSSYTP_CUDA_PLUGIN_ENTRY "lossytp_cuda_plugin_table"
extern "C" const lossytp::cuda::PluginTable* lossytp_cuda_plugin_table();
