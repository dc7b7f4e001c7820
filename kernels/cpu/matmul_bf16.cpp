// The linear layer with bf16 GEMM operands (--bf16), on the CPU: each operand is rounded to bf16
// (kernels/bf16.h, the same rounding as the GPU) into a thread-local scratch buffer, stored as
// fp32, and the fp32 matmul_forward/matmul_backward run on the rounded copies. A product of two
// bf16 values is exact in fp32 (8 + 8 significant bits), so this is a faithful emulation of a
// bf16-input, fp32-accumulate GEMM; only the order of the fp32 additions differs from a GPU's.
#include "kernels/cpu/ops.h"

#include <cstddef>
#include <memory>

#include "kernels/cpu/bf16_operands.h"

namespace lossytp::cpu {

namespace {

thread_local HostScratch inp_r, weight_r, dout_r;

}  // namespace

void matmul_forward_bf16(float* out, const float* inp, const float* weight, const float* bias,
                         int N, int C, int OC) {
  if (N <= 0 || OC <= 0) return;
  const size_t nc = C > 0 ? static_cast<size_t>(C) : 0;
  const float* a = rounded(inp_r, inp, static_cast<size_t>(N) * nc);
  const float* w = rounded(weight_r, weight, static_cast<size_t>(OC) * nc);
  matmul_forward(out, a, w, bias, N, C, OC);
}

void matmul_backward_bf16(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, int N, int C, int OC) {
  const size_t n = N > 0 ? static_cast<size_t>(N) : 0;
  const size_t c = C > 0 ? static_cast<size_t>(C) : 0;
  const size_t oc = OC > 0 ? static_cast<size_t>(OC) : 0;
  const float* d = rounded(dout_r, dout, n * oc);
  const float* w = dinp != nullptr ? rounded(weight_r, weight, oc * c) : nullptr;
  const float* a = dweight != nullptr ? rounded(inp_r, inp, n * c) : nullptr;
  // dinp and dweight from the rounded operands; dbias from the fp32 dout
  matmul_backward(dinp, dweight, nullptr, d, a, w, N, C, OC);
  if (dbias != nullptr) matmul_backward(nullptr, nullptr, dbias, dout, nullptr, nullptr, N, C, OC);
}

}  // namespace lossytp::cpu
