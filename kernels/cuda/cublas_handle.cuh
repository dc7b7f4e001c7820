// Private helpers of the cuBLAS-based kernels (matmul.cu, matmul_bf16.cu, attention.cu).
#pragma once
#include <cublas_v2.h>

#include <cstddef>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"

namespace lossytp::cuda {

// This host thread's cuBLAS handle (defined in matmul.cu): created on first use, bound to the
// legacy default stream (stream 0, like every kernel here), default math mode (fp32 GEMMs are
// true fp32, no TF32). One per thread because virtual ranks call the kernels from several host
// threads at once and a handle must not be shared between threads issuing concurrently.
cublasHandle_t cublas_handle();

inline void check_cublas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(what) + " failed (cuBLAS status " + std::to_string(st) + ")");
}

// Device scratch memory, grown on demand and kept (never freed or reallocated in steady state).
// Use as a thread_local: each host thread has its own, and since all its work is queued on the
// default stream in order, reusing the buffer at the next call is safe without a sync. Growing
// frees the old buffer with cudaFree, which waits for the work already queued on the device.
class DeviceScratch {
 public:
  DeviceScratch() = default;
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  ~DeviceScratch() {
    if (p_) cudaFree(p_);  // at thread or process exit; an error then is of no interest
  }
  // At least `bytes` bytes (256-byte aligned, cudaMalloc's guarantee), contents undefined.
  void* raw(size_t bytes) {
    if (bytes > bytes_) {
      if (p_) check_cuda(cudaFree(p_), "cudaFree (scratch)");
      p_ = nullptr;
      bytes_ = 0;
      check_cuda(cudaMalloc(&p_, bytes), "cudaMalloc (scratch)");
      bytes_ = bytes;
    }
    return p_;
  }
  // At least `count` elements of T.
  template <typename T>
  T* get(size_t count) {
    return static_cast<T*>(raw(count * sizeof(T)));
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace lossytp::cuda
