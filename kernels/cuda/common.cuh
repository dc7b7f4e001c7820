// Shared helpers of the CUDA kernels (private to kernels/cuda).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace lossytp::cuda {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
// After a launch: reports a bad configuration at once (errors inside the kernel surface at the
// next synchronising call).
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

constexpr int kThreads = 256;
inline unsigned blocks_for(size_t n, int threads = kThreads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

// dst[i] = bf16(src[i]) with the CPU's rounding (kernels/bf16.h); bf16_round.cu.
void round_to_bf16_copy(__nv_bfloat16* dst, const float* src, size_t n);

}  // namespace lossytp::cuda
