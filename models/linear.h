// The GEMMs of every linear layer (out = inp @ W^T + b), in the model's compute precision:
// fp32, or bf16 operands with fp32 accumulation (--bf16).
#pragma once
#include "kernels/ops.h"
#include "models/config.h"

namespace lossytp {

inline void linear_forward(const Compute& c, float* out, const float* inp, const float* weight,
                           const float* bias, int N, int C, int OC) {
  if (c.bf16) ops::matmul_forward_bf16(c.device, out, inp, weight, bias, N, C, OC);
  else ops::matmul_forward(c.device, out, inp, weight, bias, N, C, OC);
}

inline void linear_backward(const Compute& c, float* dinp, float* dweight, float* dbias,
                            const float* dout, const float* inp, const float* weight, int N,
                            int C, int OC) {
  if (c.bf16) ops::matmul_backward_bf16(c.device, dinp, dweight, dbias, dout, inp, weight, N, C, OC);
  else ops::matmul_backward(c.device, dinp, dweight, dbias, dout, inp, weight, N, C, OC);
}

}  // namespace lossytp
