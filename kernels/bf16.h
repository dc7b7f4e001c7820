// bfloat16 rounding, one definition for host and device code (LOSSYTP_HD, kernels/philox.h), so
// the CPU (kernels/cpu/matmul_bf16.cpp) and the GPU (kernels/cuda/matmul_bf16.cu) round every
// GEMM operand to the same bits.
//
// bf16 is the upper half of an fp32: sign, the same 8-bit exponent, 7 explicit mantissa bits.
// Rounding is to nearest, ties to even, on the fp32 bits (subnormals included, values past the
// largest bf16 become infinity); a NaN becomes the canonical quiet NaN 0x7FFF. This is exactly
// what CUDA's __float2bfloat16_rn does (cuda_bf16.hpp; tests/unit/test_bf16_matmul.cpp compares
// the two when the toolkit is present).
#pragma once
#include <cstdint>
#include <cstring>

#include "kernels/philox.h"

namespace lossytp {

LOSSYTP_HD uint32_t bf16_float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

LOSSYTP_HD float bf16_bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// The 16 bits of the bf16 nearest to x (ties to even).
LOSSYTP_HD uint16_t bf16_bits(float x) {
  const uint32_t u = bf16_float_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFFu;  // NaN
  // Adding 0x7FFF rounds the dropped half up when it is above one half; the extra 1 when the
  // kept part is odd turns an exact half into round-to-even. A carry into the exponent is the
  // right answer (the next binade, or infinity past the largest finite bf16).
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// The fp32 value of bf16 bits.
LOSSYTP_HD float bf16_to_float(uint16_t b) { return bf16_bits_float(static_cast<uint32_t>(b) << 16); }

// x rounded to the nearest bf16, as an fp32 (exact: every bf16 is an fp32).
LOSSYTP_HD float bf16_round(float x) { return bf16_to_float(bf16_bits(x)); }

}  // namespace lossytp
