// Where a buffer lives. Tensors carry it (sim/tensor.h); kernels/ops.h runs each kernel there.
#pragma once

namespace lossytp {

enum class Device { CPU, CUDA };

inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

}  // namespace lossytp
