// Device memory, copies and the device query.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

bool device_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return false;
  }
  return n > 0;
}

std::string device_name() {
  cudaDeviceProp p{};
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  return p.name;
}

void* alloc(size_t bytes) {
  void* p = nullptr;
  check_cuda(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
  check_cuda(cudaMemset(p, 0, bytes ? bytes : 1), "cudaMemset");
  return p;
}

void free(void* p) {
  if (p) cudaFree(p);
}

void to_device(void* dst, const void* src, size_t bytes) {
  check_cuda(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}

void to_host(void* dst, const void* src, size_t bytes) {
  check_cuda(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
}

void synchronize() { check_cuda(cudaDeviceSynchronize(), "a CUDA kernel"); }

}  // namespace lossytp::cuda
