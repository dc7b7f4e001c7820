#include "sim/device_buffer.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>

#ifdef LOSSYTP_HAVE_CUDA
#include "kernels/cuda/ops.h"
#endif

namespace lossytp {

namespace {

// Zeroed storage of `bytes` (> 0) on `dev`.
void* allocate(Device dev, size_t bytes) {
  if (dev == Device::CUDA) {
#ifdef LOSSYTP_HAVE_CUDA
    return cuda::alloc(bytes);  // zero-initialised
#else
    throw std::runtime_error("a CUDA buffer needs a build with CUDA (CMake found no nvcc/NCCL)");
#endif
  }
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  return p;
}

void deallocate(Device dev, void* p) {
  if (!p) return;
#ifdef LOSSYTP_HAVE_CUDA
  if (dev == Device::CUDA) { cuda::free(p); return; }
#endif
  std::free(p);
}

}  // namespace

DeviceBuffer::DeviceBuffer(Device dev, size_t bytes) : dev_(dev) {
  if (dev == Device::CUDA) {
#ifndef LOSSYTP_HAVE_CUDA
    throw std::runtime_error("a CUDA buffer needs a build with CUDA (CMake found no nvcc/NCCL)");
#endif
  }
  reserve(bytes);
}

DeviceBuffer::~DeviceBuffer() { release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : dev_(o.dev_), p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    release();
    dev_ = o.dev_;
    p_ = std::exchange(o.p_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::release() {
  deallocate(dev_, p_);
  p_ = nullptr;
  bytes_ = 0;
}

void DeviceBuffer::reserve(size_t bytes, bool keep) {
  if (bytes <= bytes_) return;
  const size_t size = (bytes + 255) / 256 * 256;  // 64-byte alignment of every float offset, fewer regrowths
  void* q = allocate(dev_, size);
  if (keep && bytes_) {
    if (dev_ == Device::CPU) {
      std::memcpy(q, p_, bytes_);
    } else {
#ifdef LOSSYTP_HAVE_CUDA
      cuda::copy_bytes(q, p_, bytes_);
#endif
    }
  }
  deallocate(dev_, p_);
  p_ = q;
  bytes_ = size;
}

void copy_bytes(Device dev, void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  if (dev == Device::CPU) { std::memcpy(dst, src, bytes); return; }
#ifdef LOSSYTP_HAVE_CUDA
  cuda::copy_bytes(dst, src, bytes);
#else
  throw std::runtime_error("a copy between CUDA buffers needs a build with CUDA");
#endif
}

}  // namespace lossytp
