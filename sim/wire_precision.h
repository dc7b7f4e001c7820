// Wire precision of the collectives: with --bf16 the payloads travel as bf16. The values stay in
// fp32 buffers; what crosses a link is rounded to the nearest bf16 (ties to even) and counted
// with 2 bytes per element. One rounding function for both devices (kernels/bf16.h), so CPU
// and GPU runs see the same bits.
#pragma once
#include <cstddef>

#include "kernels/device.h"

namespace lossytp {

// x[0:n] rounded in place to bf16 values, on `dev`.
void round_to_bf16(Device dev, float* x, size_t n);

// Bytes of one element on the wire.
inline size_t wire_elem_bytes(bool bf16) { return bf16 ? 2 : 4; }

}  // namespace lossytp
