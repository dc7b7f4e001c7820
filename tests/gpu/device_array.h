// A device array for the GPU tests: allocated (zeroed) or uploaded from a host vector, freed at
// scope exit, read back with host() after the device has finished.
#pragma once
#include <vector>

#include "kernels/cuda/ops.h"

namespace lossytp::testing {

template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : p(static_cast<T*>(cuda::alloc(count * sizeof(T)))), n(count) {}
  explicit Dev(const std::vector<T>& h) : Dev(h.size()) { cuda::to_device(p, h.data(), n * sizeof(T)); }
  ~Dev() { cuda::free(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  std::vector<T> host() const {
    std::vector<T> h(n);
    cuda::synchronize();
    cuda::to_host(h.data(), p, n * sizeof(T));
    return h;
  }
};

}  // namespace lossytp::testing
