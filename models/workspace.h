// Temporaries shared by every block of a model (backward scratch, recomputed activations): a
// part asks for a named buffer of at least n floats on the model's device. Blocks run one after
// another, so one buffer per name serves all layers.
#pragma once
#include <cstddef>
#include <map>
#include <string>

#include "sim/tensor.h"

namespace lossytp {

class Workspace {
 public:
  explicit Workspace(Device dev = Device::CPU) : dev_(dev) {}
  float* get(const std::string& name, size_t n) {
    Tensor& t = bufs_[name];
    if (t.numel() < n) t = Tensor({static_cast<int64_t>(n)}, dev_);
    return t.data();
  }
  // The named buffer as a tensor of `shape` (a view sharing its storage; it keeps that storage
  // alive when the buffer later grows).
  Tensor tensor(const std::string& name, std::vector<int64_t> shape) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    get(name, n);
    return bufs_[name].flat(0, n, std::move(shape));
  }

 private:
  Device dev_;
  std::map<std::string, Tensor> bufs_;
};

}  // namespace lossytp
