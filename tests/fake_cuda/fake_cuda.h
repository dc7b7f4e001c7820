// Hooks of the host-memory stand-in for kernels/cuda (fake_cuda.cpp), for the fake_cuda test's
// main(): what was allocated, and how often each "device" function ran.
#pragma once
#include <cstddef>
#include <map>
#include <string>

namespace lossytp::fake_cuda {

struct Stats {
  size_t allocs = 0, frees = 0;        // cuda::alloc / cuda::free calls
  size_t live = 0, live_bytes = 0;     // allocations not yet freed
  size_t peak_bytes = 0;               // most bytes live at once
  bool protect = false;                // device memory is PROT_NONE outside the fake's calls
  std::map<std::string, size_t> calls;  // cuda:: function -> calls
};
Stats stats();

}  // namespace lossytp::fake_cuda
