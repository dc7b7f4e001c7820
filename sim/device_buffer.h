// DeviceBuffer: raw bytes owned on a device (64-byte-aligned host memory, or GPU memory in builds
// with CUDA), zero-initialised, growable. The communication layer's scratch (ring receive
// blocks, masks, accumulators, staging) and its stale-value store live in these, so a collective
// on device buffers never round-trips through the host, and a buffer that has grown once is
// reused: steady-state collectives allocate nothing.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/device.h"

namespace lossytp {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // `bytes` zero bytes on `dev` (CUDA needs a build with CUDA: std::runtime_error otherwise).
  DeviceBuffer(Device dev, size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  Device device() const { return dev_; }
  size_t bytes() const { return bytes_; }
  void* data() { return p_; }
  float* floats() { return static_cast<float*>(p_); }
  uint8_t* u8() { return static_cast<uint8_t*>(p_); }

  // Makes room for at least `bytes`; keep: the old contents survive (the new tail is zero),
  // else the contents are unspecified. No-op when large enough. Growing frees the old storage
  // (on CUDA cudaFree waits for queued work, so nothing in flight reads freed memory).
  void reserve(size_t bytes, bool keep = false);
  // reserve() as floats, returning the storage.
  float* floats(size_t n, bool keep = false) {
    reserve(n * sizeof(float), keep);
    return floats();
  }
  uint8_t* u8(size_t n, bool keep = false) {
    reserve(n, keep);
    return u8();
  }

 private:
  void release();
  Device dev_ = Device::CPU;
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// `bytes` from src to dst, both on `dev` (on CUDA either may also be host memory: unified
// addressing tells which). Device-to-device copies are queued on the default stream.
void copy_bytes(Device dev, void* dst, const void* src, size_t bytes);

}  // namespace lossytp
