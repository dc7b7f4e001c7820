// The GPU plugin's entry point: the table of kernels/cuda/plugin_functions.h's functions, which
// kernels/cuda_plugin.cpp reads after dlopen. Part of liblossytp_cuda.so only.
#include "kernels/cuda/plugin_functions.h"

namespace lossytp::cuda {
namespace {

#define LOSSYTP_CUDA_PLUGIN_ADDR(R, name, params, args) &cuda::name,
#define LOSSYTP_CUDA_PLUGIN_QADDR(R, name, params, args, fallback) &cuda::name,
const PluginTable kTable = {
    kPluginSignature,
    LOSSYTP_CUDA_PLUGIN_FUNCTIONS(LOSSYTP_CUDA_PLUGIN_ADDR, LOSSYTP_CUDA_PLUGIN_QADDR)};
#undef LOSSYTP_CUDA_PLUGIN_ADDR
#undef LOSSYTP_CUDA_PLUGIN_QADDR

}  // namespace
}  // namespace lossytp::cuda

// The plugin is built with hidden visibility: this and sim/nccl_backend.cpp's factory are all it
// exports.
extern "C" __attribute__((visibility("default"))) const lossytp::cuda::PluginTable*
lossytp_cuda_plugin_table() {
  return &lossytp::cuda::kTable;
}
