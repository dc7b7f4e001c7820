// The network models' work on the device: packet masks from the same per-packet Philox functions
// as the CPU (kernels/packet_rng.h, so masks are bit-identical), and a received block through
// its mask with the fill policy (sim/ring_collectives.h's apply_delivery).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

namespace {

__global__ void iid_mask_k(net::PacketStream s, uint32_t lane, uint64_t t, size_t n, uint8_t* lost) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) lost[i] |= static_cast<uint8_t>(net::iid_packet_lost(s, lane, t, i));
}

// The chain is sequential within a message: one thread walks it (messages run in parallel when
// a caller launches one per message).
__global__ void ge_packet_mask_k(net::PacketStream s, uint64_t t_pi, uint64_t t_gb, uint64_t t_bg,
                                 uint64_t t_good, uint64_t t_bad, size_t n, uint8_t* lost) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  const uint64_t t_loss[2] = {t_good, t_bad};
  net::ge_packet_loss_reference(s, t_pi, t_gb, t_bg, t_loss, n, lost);
}

__device__ float combine(float a, float b, bool max_op) { return max_op ? fmaxf(a, b) : a + b; }

__global__ void apply_delivery_k(float* own, const float* recv, size_t len, const uint8_t* mask,
                                 size_t epp, int fill, bool reduce, bool max_op, float rescale,
                                 float* stale) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= len) return;
  const bool lost = mask && mask[i / epp];
  if (!lost) {
    const float r = recv[i];
    // rescale as an explicit fma, as the CPU does (no compiler-dependent contraction)
    if (reduce) own[i] = max_op ? fmaxf(own[i], r) : (fill == 1 ? fmaf(rescale, r, own[i]) : own[i] + r);
    else own[i] = r;
    if (stale) stale[i] = r;
    return;
  }
  switch (fill) {
    case 0:  // zero
      if (reduce) { if (max_op) own[i] = fmaxf(own[i], 0.0f); }
      else own[i] = 0.0f;
      break;
    case 3:  // stale
      own[i] = reduce ? combine(own[i], stale[i], max_op) : stale[i];
      break;
    default:  // local, rescale: the receiver keeps what it has
      break;
  }
}

}  // namespace

void iid_mask(const net::PacketStream& s, uint32_t lane, uint64_t t, size_t n, uint8_t* lost) {
  if (n == 0) return;
  iid_mask_k<<<blocks_for(n), kThreads>>>(s, lane, t, n, lost);
  check_launch("iid_mask");
}

void ge_packet_mask(const net::PacketStream& s, uint64_t t_pi, uint64_t t_gb, uint64_t t_bg,
                    uint64_t t_loss_good, uint64_t t_loss_bad, size_t n, uint8_t* lost) {
  if (n == 0) return;
  ge_packet_mask_k<<<1, 1>>>(s, t_pi, t_gb, t_bg, t_loss_good, t_loss_bad, n, lost);
  check_launch("ge_packet_mask");
}

void apply_delivery(float* own, const float* recv, size_t len, const uint8_t* mask,
                    size_t elems_per_packet, int fill, bool reduce, bool max_op, float rescale,
                    float* stale) {
  if (len == 0) return;
  apply_delivery_k<<<blocks_for(len), kThreads>>>(own, recv, len, mask, elems_per_packet, fill,
                                                  reduce, max_op, rescale, stale);
  check_launch("apply_delivery");
}

}  // namespace lossytp::cuda
