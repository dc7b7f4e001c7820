// Private to kernels/cpu: bf16-rounded copies of GEMM operands for the --bf16 emulation
// (matmul_bf16.cpp, attention_bf16.cpp).
#pragma once
#include <cstddef>
#include <memory>

#include "kernels/bf16.h"

namespace lossytp::cpu {

// Grown on demand, never shrunk; callers keep one per host thread (virtual ranks).
class HostScratch {
 public:
  float* get(size_t n) {
    if (n > cap_) {
      p_.reset(new float[n]);
      cap_ = n;
    }
    return p_.get();
  }

 private:
  std::unique_ptr<float[]> p_;
  size_t cap_ = 0;
};

// The bf16-rounded copy of src[0:n] in `scratch`.
inline const float* rounded(HostScratch& scratch, const float* src, size_t n) {
  float* dst = scratch.get(n);
  const long long nn = static_cast<long long>(n);
#pragma omp parallel for simd schedule(static) if (nn > (1 << 16))
  for (long long i = 0; i < nn; ++i) dst[i] = bf16_round(src[i]);
  return dst;
}

}  // namespace lossytp::cpu
