#include "sim/wire_precision.h"

#include <stdexcept>

#include "kernels/bf16.h"

#ifdef LOSSYTP_HAVE_CUDA
#include "kernels/cuda/ops.h"
#endif

namespace lossytp {

void round_to_bf16(Device dev, float* x, size_t n) {
  if (dev == Device::CUDA) {
#ifdef LOSSYTP_HAVE_CUDA
    cuda::bf16_round_inplace(x, n);
    return;
#else
    throw std::runtime_error("bf16 rounding of a CUDA buffer needs a build with CUDA");
#endif
  }
  for (size_t i = 0; i < n; ++i) x[i] = bf16_round(x[i]);
}

}  // namespace lossytp
