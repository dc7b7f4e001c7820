// Dispatch of kernels/ops.h: the CPU or CUDA twin by the buffers' device.
#include "kernels/ops.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "kernels/cpu/ops.h"
#ifdef LOSSYTP_HAVE_CUDA
#include "kernels/cuda/ops.h"
#endif
#ifdef LOSSYTP_CUDA_PLUGIN_PATH
#include "kernels/cuda_plugin.h"
#endif

namespace lossytp::ops {

#ifndef LOSSYTP_HAVE_CUDA
namespace {
[[noreturn]] void no_cuda() {
  throw std::runtime_error("a CUDA kernel was called in a build without CUDA (CMake found no nvcc/NCCL)");
}
}  // namespace
#endif

// Runs `call` from cuda:: or cpu:: (both twins take the same arguments).
#ifdef LOSSYTP_HAVE_CUDA
#define LOSSYTP_ON(d, call) \
  if ((d) == Device::CUDA) return cuda::call; \
  return cpu::call
#else
#define LOSSYTP_ON(d, call) \
  if ((d) == Device::CUDA) no_cuda(); \
  return cpu::call
#endif

void matmul_forward(Device d, float* out, const float* inp, const float* weight, const float* bias,
                    int N, int C, int OC) {
  LOSSYTP_ON(d, matmul_forward(out, inp, weight, bias, N, C, OC));
}
void matmul_backward(Device d, float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int C, int OC) {
  LOSSYTP_ON(d, matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, C, OC));
}
void matmul_forward_bf16(Device d, float* out, const float* inp, const float* weight,
                         const float* bias, int N, int C, int OC) {
  LOSSYTP_ON(d, matmul_forward_bf16(out, inp, weight, bias, N, C, OC));
}
void matmul_backward_bf16(Device d, float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, int N, int C, int OC) {
  LOSSYTP_ON(d, matmul_backward_bf16(dinp, dweight, dbias, dout, inp, weight, N, C, OC));
}
void layernorm_forward(Device d, float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C, float eps) {
  LOSSYTP_ON(d, layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps));
}
void layernorm_backward(Device d, float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C) {
  LOSSYTP_ON(d, layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C));
}
void gelu_forward(Device d, float* out, const float* inp, size_t n) {
  LOSSYTP_ON(d, gelu_forward(out, inp, n));
}
void gelu_backward(Device d, float* dinp, const float* inp, const float* dout, size_t n) {
  LOSSYTP_ON(d, gelu_backward(dinp, inp, dout, n));
}
void attention_forward(Device d, float* out, float* lse, const float* qkv, int B, int T, int NH,
                       int NKV, int HD) {
  LOSSYTP_ON(d, attention_forward(out, lse, qkv, B, T, NH, NKV, HD));
}
void attention_backward(Device d, float* dqkv, const float* dout, const float* qkv,
                        const float* out, const float* lse, int B, int T, int NH, int NKV, int HD) {
  LOSSYTP_ON(d, attention_backward(dqkv, dout, qkv, out, lse, B, T, NH, NKV, HD));
}
namespace {
void cp_cpu_only(Device d) {
  if (d != Device::CPU)
    throw std::runtime_error("context parallelism is not yet implemented on CUDA");
}
}  // namespace
void attention_block_forward(Device d, float* o, float* lse, const float* q, const float* k,
                             const float* v, int B, int NH, int NKV, int Tq, int Tk, int HD,
                             int q_pos, int k_pos) {
  cp_cpu_only(d);
  cpu::attention_block_forward(o, lse, q, k, v, B, NH, NKV, Tq, Tk, HD, q_pos, k_pos);
}
void attention_merge(Device d, float* o, float* lse, const float* o2, const float* lse2,
                     size_t rows, int HD) {
  cp_cpu_only(d);
  cpu::attention_merge(o, lse, o2, lse2, rows, HD);
}
void attention_delta(Device d, float* delta, const float* dout, const float* o, size_t rows,
                     int HD) {
  cp_cpu_only(d);
  cpu::attention_delta(delta, dout, o, rows, HD);
}
void attention_block_backward(Device d, float* dq, float* dk, float* dv, const float* q,
                              const float* k, const float* v, const float* dout, const float* lse,
                              const float* delta, int B, int NH, int NKV, int Tq, int Tk, int HD,
                              int q_pos, int k_pos) {
  cp_cpu_only(d);
  cpu::attention_block_backward(dq, dk, dv, q, k, v, dout, lse, delta, B, NH, NKV, Tq, Tk, HD,
                                q_pos, k_pos);
}
void semigroup_attention_forward(Device d, float* y, float* o, float* lse, const float* qkv, int B,
                                 int T, int NH, int HD, float t, float c) {
  LOSSYTP_ON(d, semigroup_attention_forward(y, o, lse, qkv, B, T, NH, HD, t, c));
}
void semigroup_attention_backward(Device d, float* dqkv, double* dt, double* dc, const float* dy,
                                  const float* qkv, const float* o, const float* lse, int B, int T,
                                  int NH, int HD, float t, float c) {
  LOSSYTP_ON(d, semigroup_attention_backward(dqkv, dt, dc, dy, qkv, o, lse, B, T, NH, HD, t, c));
}
void semigroup_esr_forward(Device d, float* y, float* u, float* w2, float* lse, float* rstd, float* qkvg,
                           const float* tau, const float* logw, const float* hbeta, const float* oscale,
                           float lam, float alpha, int B, int T, int NH, int HD, int Nt) {
  LOSSYTP_ON(d, semigroup_esr_forward(y, u, w2, lse, rstd, qkvg, tau, logw, hbeta, oscale, lam, alpha, B, T, NH,
                                     HD, Nt));
}
void semigroup_esr_backward(Device d, float* dqkvg, double* g_lam, double* g_logtau, double* g_logw,
                            double* g_hbeta, double* g_oscale, const float* dy, const float* qkvg,
                            const float* rstd, const float* u, const float* w2, const float* lse,
                            const float* tau, const float* logw, const float* hbeta, const float* oscale,
                            float lam, float alpha, int B, int T, int NH, int HD, int Nt) {
  LOSSYTP_ON(d, semigroup_esr_backward(dqkvg, g_lam, g_logtau, g_logw, g_hbeta, g_oscale, dy, qkvg, rstd, u, w2,
                                      lse, tau, logw, hbeta, oscale, lam, alpha, B, T, NH, HD, Nt));
}
void attention_forward_bf16(Device d, float* out, float* lse, const float* qkv, int B, int T,
                            int NH, int NKV, int HD) {
  LOSSYTP_ON(d, attention_forward_bf16(out, lse, qkv, B, T, NH, NKV, HD));
}
void attention_backward_bf16(Device d, float* dqkv, const float* dout, const float* qkv,
                             const float* out, const float* lse, int B, int T, int NH, int NKV,
                             int HD) {
  LOSSYTP_ON(d, attention_backward_bf16(dqkv, dout, qkv, out, lse, B, T, NH, NKV, HD));
}
void embedding_forward(Device d, float* out, const int32_t* tok, const float* table, int N, int C,
                       int vocab_start, int V) {
  LOSSYTP_ON(d, embedding_forward(out, tok, table, N, C, vocab_start, V));
}
void embedding_backward(Device d, float* dtable, const int32_t* tok, const float* dout, int N,
                        int C, int vocab_start, int V) {
  LOSSYTP_ON(d, embedding_backward(dtable, tok, dout, N, C, vocab_start, V));
}
void position_forward(Device d, float* out, const float* pos, int B, int T, int C) {
  LOSSYTP_ON(d, position_forward(out, pos, B, T, C));
}
void position_backward(Device d, float* dpos, const float* dout, int B, int T, int C) {
  LOSSYTP_ON(d, position_backward(dpos, dout, B, T, C));
}
void ce_local_max(Device d, float* row_max, const float* logits, int N, int V) {
  LOSSYTP_ON(d, ce_local_max(row_max, logits, N, V));
}
void ce_local_target(Device d, float* target_logit, const float* logits, const int32_t* tgt,
                     int N, int V, int vocab_start) {
  LOSSYTP_ON(d, ce_local_target(target_logit, logits, tgt, N, V, vocab_start));
}
void ce_local_exp_sum(Device d, float* sum_exp, float* logits, const float* row_max, int N, int V) {
  LOSSYTP_ON(d, ce_local_exp_sum(sum_exp, logits, row_max, N, V));
}
void ce_losses(Device d, float* losses, const float* row_max, const float* sum_exp,
               const float* target_logit, const int32_t* tgt, int N) {
  LOSSYTP_ON(d, ce_losses(losses, row_max, sum_exp, target_logit, tgt, N));
}
void ce_backward_inplace(Device d, float* logits, const float* sum_exp, const int32_t* tgt,
                         const float* dloss, int N, int V, int vocab_start) {
  LOSSYTP_ON(d, ce_backward_inplace(logits, sum_exp, tgt, dloss, N, V, vocab_start));
}
void adamw_update(Device d, float* param, const float* grad, float* m, float* v, size_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t) {
  LOSSYTP_ON(d, adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t));
}
void bias_add(Device d, float* y, const float* b, int N, int C) {
  LOSSYTP_ON(d, bias_add(y, b, N, C));
}
void bias_grad(Device d, float* db, const float* dy, int N, int C) {
  LOSSYTP_ON(d, bias_grad(db, dy, N, C));
}
void copy_cols(Device d, float* dst, int ldd, const float* src, int lds, int N, int w) {
  LOSSYTP_ON(d, copy_cols(dst, ldd, src, lds, N, w));
}
void scale_cols(Device d, float* x, int N, int C, int c0, float s) {
  LOSSYTP_ON(d, scale_cols(x, N, C, c0, s));
}
void fill_cols(Device d, float* x, int N, int ld, int c0, int c1, float v) {
  LOSSYTP_ON(d, fill_cols(x, N, ld, c0, c1, v));
}
void rmsnorm_forward(Device d, float* out, float* rstd, const float* inp, const float* weight,
                     int N, int C, float eps) {
  LOSSYTP_ON(d, rmsnorm_forward(out, rstd, inp, weight, N, C, eps));
}
void rmsnorm_backward(Device d, float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int N, int C) {
  LOSSYTP_ON(d, rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, N, C));
}
void rope_forward(Device d, float* qkv, const float* cos, const float* sin, int B, int T, int NH,
                  int NKV, int HD, int rot_dim) {
  LOSSYTP_ON(d, rope_forward(qkv, cos, sin, B, T, NH, NKV, HD, rot_dim));
}
void rope_backward(Device d, float* dqkv, const float* cos, const float* sin, int B, int T, int NH,
                   int NKV, int HD, int rot_dim) {
  LOSSYTP_ON(d, rope_backward(dqkv, cos, sin, B, T, NH, NKV, HD, rot_dim));
}
void swiglu_forward(Device d, float* out, const float* inp, int N, int F) {
  LOSSYTP_ON(d, swiglu_forward(out, inp, N, F));
}
void swiglu_backward(Device d, float* dinp, const float* inp, const float* dout, int N, int F) {
  LOSSYTP_ON(d, swiglu_backward(dinp, inp, dout, N, F));
}
void scale_inplace(Device d, float* x, float s, size_t n) {
  LOSSYTP_ON(d, scale_inplace(x, s, n));
}
void add_inplace(Device d, float* y, const float* x, size_t n) {
  LOSSYTP_ON(d, add_inplace(y, x, n));
}
void max_inplace(Device d, float* y, const float* x, size_t n) {
  LOSSYTP_ON(d, max_inplace(y, x, n));
}
double sum(Device d, const float* x, size_t n) { LOSSYTP_ON(d, sum(x, n)); }
// encode=hadamard of --net: CPU only so far.
void hadamard_encode(Device d, float* x, size_t n, size_t block, uint64_t key) {
  if (d != Device::CPU) throw std::runtime_error("encode=hadamard is not yet implemented on CUDA");
  cpu::hadamard_encode(x, n, block, key);
}
void hadamard_decode(Device d, float* x, size_t n, size_t block, uint64_t key) {
  if (d != Device::CPU) throw std::runtime_error("encode=hadamard is not yet implemented on CUDA");
  cpu::hadamard_decode(x, n, block, key);
}

void copy(Device d, float* dst, const float* src, size_t n) {
#ifdef LOSSYTP_HAVE_CUDA
  if (d == Device::CUDA) return cuda::copy(dst, src, n);
#else
  if (d == Device::CUDA) no_cuda();
#endif
  if (n && dst != src) std::copy(src, src + n, dst);
}

void fill(Device d, float* x, float v, size_t n) {
#ifdef LOSSYTP_HAVE_CUDA
  if (d == Device::CUDA) return cuda::fill(x, v, n);
#else
  if (d == Device::CUDA) no_cuda();
#endif
  std::fill(x, x + n, v);
}

double sum_squares(Device d, const std::vector<std::pair<const float*, size_t>>& spans) {
#ifdef LOSSYTP_HAVE_CUDA
  if (d == Device::CUDA) return cuda::sum_squares(spans);
#else
  if (d == Device::CUDA) no_cuda();
#endif
  double s = 0.0;
  for (const auto& [p, n] : spans) s += cpu::sum_squares(p, n);
  return s;
}

double available_memory(Device d) {
  if (d == Device::CUDA) {
#ifdef LOSSYTP_HAVE_CUDA
    return static_cast<double>(cuda::free_memory_bytes());
#else
    no_cuda();
#endif
  }
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  double kb = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
  std::fclose(f);
  return kb * 1024.0;
}

std::string unavailable(Device d) {
  if (d == Device::CPU) return "";
#ifdef LOSSYTP_HAVE_CUDA
#ifdef LOSSYTP_CUDA_PLUGIN_PATH
  if (std::string why = cuda::plugin_error(); !why.empty()) return why;  // loads the GPU plugin
#endif
  if (!cuda::device_available())
    return "no CUDA GPU is visible to this process (driver missing, or CUDA_VISIBLE_DEVICES hides it)";
  return "";
#else
  return "this build has no GPU path (CMake found no nvcc/NCCL in /usr/local/cuda, or -DLOSSYTP_CUDA=OFF)";
#endif
}

#undef LOSSYTP_ON

}  // namespace lossytp::ops
