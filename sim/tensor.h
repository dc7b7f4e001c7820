// Tensor: an fp32 view into shared storage, tagged with the device it lives on: 64-byte-aligned
// host memory, or GPU memory (builds with CUDA). Views share storage (a slice of rows, a
// reshape); model code passes data() to kernels.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/device.h"

namespace lossytp {

class Tensor {
 public:
  Tensor() = default;
  // Zero-initialised new storage.
  explicit Tensor(std::vector<int64_t> shape, Device dev = Device::CPU);
  Tensor(std::initializer_list<int64_t> shape) : Tensor(std::vector<int64_t>(shape)) {}

  float* data() { return base_ ? base_.get() + offset_ : nullptr; }
  const float* data() const { return base_ ? base_.get() + offset_ : nullptr; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int ndim() const { return static_cast<int>(shape_.size()); }
  size_t numel() const { return numel_; }
  size_t bytes() const { return numel_ * sizeof(float); }
  Device device() const { return device_; }
  bool defined() const { return base_ != nullptr; }

  // Same storage, new shape with the same number of elements.
  Tensor view(std::vector<int64_t> shape) const;
  // Rows [begin, end) of the first dimension, sharing storage.
  Tensor slice(int64_t begin, int64_t end) const;
  // A flat view of n elements starting at element `offset` of this tensor.
  Tensor flat(size_t offset, size_t n, std::vector<int64_t> shape) const;
  void zero();
  void fill(float v);
  Tensor clone() const;
  // A copy on `dev` (CUDA tensors need a build with CUDA).
  Tensor to(Device dev) const;
  // numel() floats between host memory and this tensor, wherever it lives.
  void copy_from_host(const float* src);
  void copy_to_host(float* dst) const;

 private:
  std::shared_ptr<float> base_;
  size_t offset_ = 0;
  size_t numel_ = 0;
  std::vector<int64_t> shape_;
  Device device_ = Device::CPU;
};

std::string shape_str(const std::vector<int64_t>& s);

}  // namespace lossytp
