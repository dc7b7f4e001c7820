// CUDA kernels: the GPU twins of kernels/cpu/ops.h, on device pointers, with the same layouts
// and the same accumulate/overwrite conventions (read that header first). Everything runs on
// the current device's default stream, in order, with no host round trip; synchronize() waits.
// Determinism: every reduction has a fixed order, except embedding_backward (atomic adds: the
// order of additions into one vocabulary row varies between runs).
// Built only when CMake finds CUDA and NCCL (LOSSYTP_HAVE_CUDA); plain C++ callers include this
// header, the kernels live in kernels/cuda/*.cu, built into the GPU plugin liblossytp_cuda.so: a
// function the core or the tests call also needs its entry in kernels/cuda/plugin_functions.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernels/packet_rng.h"

namespace lossytp::cuda {

// ---- runtime
// True when a CUDA device can be used (a driver and at least one GPU).
bool device_available();
std::string device_name();
void* alloc(size_t bytes);  // zero-initialised; throws std::runtime_error on failure
void free(void* p);
void to_device(void* dst, const void* src, size_t bytes);
void to_host(void* dst, const void* src, size_t bytes);
void synchronize();  // also reports an error raised by an earlier kernel
int device_count();      // 0 without a driver or GPU
size_t free_memory_bytes();  // free memory of the current device (cudaMemGetInfo)
void set_device(int device);  // this host thread's current device
int current_device();
// bytes between any two buffers (host or device, cudaMemcpyDefault: unified addressing tells
// which). Device-to-device copies are queued on the default stream and return at once; copies
// involving pageable host memory return when the host side is safe to reuse.
void copy_bytes(void* dst, const void* src, size_t bytes);
void memset_bytes(void* p, int value, size_t bytes);  // queued on the default stream

// ---- GEMM (cuBLAS), row-major, as cpu::sgemm
void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC);
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int C, int OC);

// ---- LayerNorm, GELU
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C, float eps);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C);
void gelu_forward(float* out, const float* inp, size_t n);
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);

// ---- causal attention, NH query heads sharing NKV key/value heads (GQA; NKV = NH: multi-head),
// qkv [B, T, NKV, NH/NKV + 2, HD] (Megatron's grouped fused QKV, kernels/cpu/ops.h),
// out [B, T, NH, HD], lse [B, NH, T]; dqkv OVERWRITTEN, a group's dk/dv summed over its heads.
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                       int HD);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int NH, int NKV, int HD);

// ---- semigroup attention (kernels/cuda/semigroup_attention.cu): kernels/cpu/ops.h's
// semigroup_attention_* (generator step) and semigroup_esr_* (ESR). Tensors are device pointers;
// the per-head constants tau, logw, hbeta, oscale ([NH, Nt], [NH]) and every double* gradient
// are HOST pointers (uploaded / summed on the device and copied back, one copy each way a call:
// the backward returns after the device has finished). HD <= 256, Nt <= 8. Deterministic.
void semigroup_attention_forward(float* y, float* o, float* lse, const float* qkv, int B, int T,
                                 int NH, int HD, float t, float c);
void semigroup_attention_backward(float* dqkv, double* dt, double* dc, const float* dy,
                                  const float* qkv, const float* o, const float* lse, int B, int T,
                                  int NH, int HD, float t, float c);
void semigroup_esr_forward(float* y, float* u, float* w2, float* lse, float* rstd, float* qkvg,
                           const float* tau, const float* logw, const float* hbeta,
                           const float* oscale, float lam, float alpha, int B, int T, int NH,
                           int HD, int Nt);
void semigroup_esr_backward(float* dqkvg, double* g_lam, double* g_logtau, double* g_logw,
                            double* g_hbeta, double* g_oscale, const float* dy, const float* qkvg,
                            const float* rstd, const float* u, const float* w2, const float* lse,
                            const float* tau, const float* logw, const float* hbeta,
                            const float* oscale, float lam, float alpha, int B, int T, int NH,
                            int HD, int Nt);

// ---- embeddings
void embedding_forward(float* out, const int32_t* tok, const float* table, int N, int C,
                       int vocab_start, int V);
void embedding_backward(float* dtable, const int32_t* tok, const float* dout, int N, int C,
                        int vocab_start, int V);
void position_forward(float* out, const float* pos, int B, int T, int C);
void position_backward(float* dpos, const float* dout, int B, int T, int C);

// ---- vocab-parallel cross-entropy pieces
void ce_local_max(float* row_max, const float* logits, int N, int V);
void ce_local_target(float* target_logit, const float* logits, const int32_t* tgt, int N, int V,
                     int vocab_start);
void ce_local_exp_sum(float* sum_exp, float* logits, const float* row_max, int N, int V);
void ce_losses(float* losses, const float* row_max, const float* sum_exp,
               const float* target_logit, const int32_t* tgt, int N);
void ce_backward_inplace(float* logits, const float* sum_exp, const int32_t* tgt,
                         const float* dloss, int N, int V, int vocab_start);

// ---- AdamW
void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t t);

// ---- vectors, rows and columns (kernels/cpu/ops.h's helpers)
void copy(float* dst, const float* src, size_t n);  // device to device
void fill(float* x, float v, size_t n);
void scale_inplace(float* x, float s, size_t n);
void add_inplace(float* y, const float* x, size_t n);
void max_inplace(float* y, const float* x, size_t n);
void bias_add(float* y, const float* b, int N, int C);
void bias_grad(float* db, const float* dy, int N, int C);
void copy_cols(float* dst, int ldd, const float* src, int lds, int N, int w);
void scale_cols(float* x, int N, int C, int c0, float s);
void fill_cols(float* x, int N, int ld, int c0, int c1, float v);
// Host values of device reductions (one device-to-host copy each), fixed order.
double sum(const float* x, size_t n);
double sum_squares(const std::vector<std::pair<const float*, size_t>>& spans);

// ---- Llama: RMSNorm, rotary embedding, SwiGLU (kernels/cuda/rmsnorm_rope_swiglu.cu)
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C,
                     float eps);
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int N, int C);
void rope_forward(float* qkv, const float* cos, const float* sin, int B, int T, int NH, int NKV,
                  int HD, int rot_dim);
void rope_backward(float* dqkv, const float* cos, const float* sin, int B, int T, int NH, int NKV,
                   int HD, int rot_dim);
void swiglu_forward(float* out, const float* inp, int N, int F);
void swiglu_backward(float* dinp, const float* inp, const float* dout, int N, int F);

// ---- network-model work on the device: the same per-packet functions as the CPU
// (kernels/packet_rng.h), so a mask drawn here is bit-identical to the CPU's.
// i.i.d. loss: lost[i] |= (word of packet i in `lane` < t), packets [0, n).
void iid_mask(const net::PacketStream& s, uint32_t lane, uint64_t t, size_t n, uint8_t* lost);
// Gilbert-Elliott, chain moving per packet (ge_packet_loss_reference on the device).
void ge_packet_mask(const net::PacketStream& s, uint64_t t_pi, uint64_t t_gb, uint64_t t_bg,
                    uint64_t t_loss_good, uint64_t t_loss_bad, size_t n, uint8_t* lost);
// A received block through its packet mask (fill: 0 zero, 1 rescale, 2 local, 3 stale), as
// sim/ring_collectives.h's apply_delivery; mask == nullptr: everything arrived.
void apply_delivery(float* own, const float* recv, size_t len, const uint8_t* mask,
                    size_t elems_per_packet, int fill, bool reduce, bool max_op, float rescale,
                    float* stale);

}  // namespace lossytp::cuda

// ==== bf16 GEMMs (kernels/cuda/matmul_bf16.cu) ===================================================
namespace lossytp::cuda {

// kernels/cpu/ops.h's matmul_forward_bf16/matmul_backward_bf16 on device pointers: operands
// rounded to bf16 exactly as the CPU rounds them (kernels/bf16.h), cublasGemmEx with bf16 A/B,
// fp32 C, fp32 accumulation; bias and dbias fp32; out/dinp overwritten, dweight/dbias +=
// (nullptr skips dinp, dweight, dbias).
void matmul_forward_bf16(float* out, const float* inp, const float* weight, const float* bias,
                         int N, int C, int OC);
void matmul_backward_bf16(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, int N, int C, int OC);

// attention_forward/attention_backward (same signatures and layouts) with bf16 GEMM operands on
// the tensor cores (kernels/cuda/attention.cu): Q, K, V, dO and the probabilities P and dS are
// rounded to bf16 (kernels/bf16.h) before their GEMMs; S, dP, O, dQ, dK, dV, the softmax, lse
// and D = rowsum(dO * O) (with the rounded dO) are fp32. kernels/cpu/ops.h's
// attention_forward_bf16/backward_bf16 is the CPU twin, within bf16 rounding (it rounds no P/dS).
void attention_forward_bf16(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                            int HD);
void attention_backward_bf16(float* dqkv, const float* dout, const float* qkv, const float* out,
                             const float* lse, int B, int T, int NH, int NKV, int HD);

}  // namespace lossytp::cuda
// ==== end of bf16 GEMMs ===========================================================================

// ==== wire precision (kernels/cuda/bf16_round.cu) ================================================
namespace lossytp::cuda {

// x[i] = the nearest bf16 of x[i] (ties to even), as fp32: kernels/bf16.h's bf16_round, so the
// CPU (sim/wire_precision.h) rounds to the same bits.
void bf16_round_inplace(float* x, size_t n);

}  // namespace lossytp::cuda
// ==== end of wire precision ======================================================================
