#include "sim/tensor.h"

#include <cstdlib>
#include <cstring>
#include <vector>

#ifdef LOSSYTP_HAVE_CUDA
#include "kernels/cuda/ops.h"
#endif
#include "kernels/ops.h"

namespace lossytp {

static size_t count(const std::vector<int64_t>& s) {
  size_t n = 1;
  for (int64_t d : s) {
    if (d < 0) throw std::invalid_argument("negative tensor dimension in " + shape_str(s));
    n *= static_cast<size_t>(d);
  }
  return n;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

Tensor::Tensor(std::vector<int64_t> shape, Device dev) : shape_(std::move(shape)), device_(dev) {
  numel_ = count(shape_);
  size_t bytes = ((std::max<size_t>(numel_, 1) * sizeof(float) + 63) / 64) * 64;
  if (dev == Device::CUDA) {
#ifdef LOSSYTP_HAVE_CUDA
    base_ = std::shared_ptr<float>(static_cast<float*>(cuda::alloc(bytes)), [](float* q) { cuda::free(q); });
    return;
#else
    throw std::runtime_error("a CUDA tensor needs a build with CUDA (CMake found no nvcc/NCCL)");
#endif
  }
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  base_ = std::shared_ptr<float>(static_cast<float*>(p), [](float* q) { std::free(q); });
}

Tensor Tensor::view(std::vector<int64_t> shape) const {
  if (count(shape) != numel_)
    throw std::invalid_argument("view " + shape_str(shape) + " of tensor " + shape_str(shape_));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  if (shape_.empty() || begin < 0 || end > shape_[0] || begin > end)
    throw std::out_of_range("slice out of range of " + shape_str(shape_));
  size_t row = shape_[0] ? numel_ / shape_[0] : 0;
  Tensor t = *this;
  t.offset_ += begin * row;
  t.shape_[0] = end - begin;
  t.numel_ = (end - begin) * row;
  return t;
}

Tensor Tensor::flat(size_t offset, size_t n, std::vector<int64_t> shape) const {
  if (offset + n > numel_ || count(shape) != n)
    throw std::out_of_range("flat view out of range of " + shape_str(shape_));
  Tensor t = *this;
  t.offset_ += offset;
  t.numel_ = n;
  t.shape_ = std::move(shape);
  return t;
}

void Tensor::zero() {
  if (!numel_) return;
  if (device_ == Device::CUDA) { ops::fill(device_, data(), 0.0f, numel_); return; }
  std::memset(data(), 0, bytes());
}

void Tensor::fill(float v) {
  if (!numel_) return;
  if (device_ == Device::CUDA) { ops::fill(device_, data(), v, numel_); return; }
  float* p = data();
  for (size_t i = 0; i < numel_; ++i) p[i] = v;
}

Tensor Tensor::clone() const { return to(device_); }

// One copy, whatever the devices: host-host memcpy, or cudaMemcpyDefault (no host staging).
Tensor Tensor::to(Device dev) const {
  Tensor t(shape_, dev);
  if (!numel_) return t;
  if (device_ == Device::CPU && dev == Device::CPU) {
    std::memcpy(t.data(), data(), bytes());
    return t;
  }
#ifdef LOSSYTP_HAVE_CUDA
  cuda::copy_bytes(t.data(), data(), bytes());
#endif
  return t;
}

void Tensor::copy_from_host(const float* src) {
  if (device_ == Device::CPU) { std::memcpy(data(), src, bytes()); return; }
#ifdef LOSSYTP_HAVE_CUDA
  cuda::to_device(data(), src, bytes());
#endif
}

void Tensor::copy_to_host(float* dst) const {
  if (device_ == Device::CPU) { std::memcpy(dst, data(), bytes()); return; }
#ifdef LOSSYTP_HAVE_CUDA
  cuda::to_host(dst, data(), bytes());
#endif
}

}  // namespace lossytp
