// Causal attention with bf16 GEMM operands (--bf16), on the CPU: q, k, v (and dout) are rounded
// to bf16 (kernels/bf16.h, the GPU's rounding) into thread-local scratch, stored as fp32, and the
// fp32 fused attention (attention.cpp) runs on the rounded copies.
//
// An emulation, not a twin bit for bit: the GPU (kernels/cuda/attention.cu) also rounds the
// probabilities P and the score gradients dS to bf16 before their GEMMs (O = P V, dV = P^T dO,
// dQ = dS K, dK = dS^T Q), but here they live inside the fused kernel's tiles and stay fp32.
// The two agree within bf16 rounding of P and dS (relative ~2^-9 per element). D = rowsum(dO *
// O) uses the rounded dO on both sides. Bit-identical to attention_forward/backward called on
// pre-rounded inputs. qkv is the grouped (GQA) layout of kernels/cpu/ops.h: (NH + 2 NKV) HD floats
// a token.
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>

#include "kernels/cpu/bf16_operands.h"
#include "kernels/cpu/ops.h"

namespace lossytp::cpu {

namespace {

thread_local HostScratch qkv_r, dout_r;

// as attention.cpp's, before the sizes below are computed from NKV
void check_groups(int NH, int NKV) {
  if (NKV <= 0 || NH % NKV != 0)
    throw std::invalid_argument("attention_bf16: NH = " + std::to_string(NH) +
                                " query heads are not a multiple of NKV = " + std::to_string(NKV) +
                                " key/value heads");
}

}  // namespace

void attention_forward_bf16(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                            int HD) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  check_groups(NH, NKV);
  const size_t n = static_cast<size_t>(B) * T * (NH + 2 * NKV) * HD;
  attention_forward(out, lse, rounded(qkv_r, qkv, n), B, T, NH, NKV, HD);
}

void attention_backward_bf16(float* dqkv, const float* dout, const float* qkv, const float* out,
                             const float* lse, int B, int T, int NH, int NKV, int HD) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  check_groups(NH, NKV);
  const size_t bt = static_cast<size_t>(B) * T;
  attention_backward(dqkv, rounded(dout_r, dout, bt * NH * HD),
                     rounded(qkv_r, qkv, bt * (NH + 2 * NKV) * HD), out, lse, B, T, NH, NKV, HD);
}

}  // namespace lossytp::cpu
