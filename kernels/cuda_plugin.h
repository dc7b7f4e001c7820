// The GPU half of a CUDA-enabled build is a plugin, liblossytp_cuda.so (kernels/cuda/*, the NCCL
// backend; linked with cudart, cuBLAS and NCCL). The core defines each cuda:: function of
// kernels/cuda/plugin_functions.h as a trampoline that opens the plugin (dlopen) on its first
// call, so a process that never touches the GPU never maps the CUDA libraries (a CPU run's
// memory is the CPU-only build's). Where it looks, in order: $LOSSYTP_CUDA_PLUGIN alone when set;
// else next to the executable, in ../lib beside it, and where the build wrote it.
// Built only with the GPU path (LOSSYTP_CUDA_PLUGIN_PATH, set by CMakeLists.txt); the fake-CUDA
// test build links tests/fake_cuda instead.
#pragma once
#include <string>

namespace lossytp::cuda {

// "" once the plugin is loaded (this call loads it), else why it cannot be, e.g. "cannot load
// liblossytp_cuda.so, the GPU half of this build: ...: libcublas.so.13: cannot open shared
// object file". device_available() and device_count() answer false and 0 then; every other
// cuda:: function throws std::runtime_error with this text.
std::string plugin_error();

// A symbol the plugin exports (dlsym), nullptr when it has none; throws std::runtime_error with
// plugin_error() when the plugin cannot be loaded.
void* plugin_symbol(const char* name);

}  // namespace lossytp::cuda
