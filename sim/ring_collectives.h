// Collectives as the ring algorithm NCCL uses, hop by hop over point-to-point messages, with
// every received message passed through the network model. A packet lost on a hop of the
// reduce-scatter phase removes that partial sum from the hop on; one lost in the all-gather
// phase leaves the receiver without the reduced value: ranks can end up with different results,
// as on a real lossy network. What the receiver uses where data did not arrive is the fill
// policy (net::Fill). Under an exact model the result equals the native collective's up to the
// order of the floating-point additions.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/device.h"
#include "netmodels/netmodel.h"
#include "sim/backend.h"
#include "sim/device_buffer.h"

namespace lossytp {

struct SiteCounters;
class StaleStore;

// Reusable buffers of one Comm, on the Comm's device: steady-state collectives allocate nothing.
struct CommScratch {
  explicit CommScratch(Device d = Device::CPU)
      : recv(d, 0), work(d, 0), mask(d, 0), masked(d, 0), original(d, 0), counts(d, 0), counts_recv(d, 0),
        encoded(d, 0), hadamard_ref(d, 0), arrived(d, 0), saved(d, 0) {}
  DeviceBuffer recv;      // a ring hop's received block
  DeviceBuffer work;      // ring reduce-scatter: the working copy of the input
  DeviceBuffer mask;      // a delivery plan's lost_mask, uploaded to the device (CUDA only)
  DeviceBuffer masked;    // endpoint mode: this rank's masked contribution
  DeviceBuffer original;  // endpoint mode: the contribution before masking
  // fill=count: contributions summed into each element so far, and a hop's received counts
  DeviceBuffer counts, counts_recv;
  // encode=hadamard: a hop's sent block encoded; the encoded fill reference of a received one;
  // with fill=count, the arrived fraction of each element's block and a saved copy of own
  DeviceBuffer encoded, hadamard_ref, arrived, saved;
};

struct HopContext {
  Backend& backend;
  const net::NetSpec* spec;  // nullptr: nothing is lost
  net::Message message;      // site, group, kind, iteration, call (src, dst, hop, bytes per hop)
  uint64_t seed;
  StaleStore* stale;
  SiteCounters& counters;
  // Where the collective's buffers live (CUDA: every float pointer is a device pointer; the
  // plans are still drawn on the host, so masks and counters are the same as on the CPU).
  Device device = Device::CPU;
  CommScratch* scratch = nullptr;  // required
  // Payloads travel as bf16 (sim/wire_precision.h): every sent chunk and every hop's partial
  // sum is rounded to bf16, and messages are counted with 2 bytes per element.
  bool wire_bf16 = false;
};

void ring_all_reduce(HopContext& ctx, float* buf, size_t n, ReduceOp op);
void ring_all_gather(HopContext& ctx, const float* in, float* out, size_t n_per_rank);
void ring_reduce_scatter(HopContext& ctx, const float* in, float* out, size_t n_per_rank);

// Applies a delivery plan to one received block of `len` floats (exposed for the tests).
// reduce: own[i] = op(own[i], received value or its fill); gather: own[i] = received or fill.
// stale (may be null unless fill is stale) holds the last value that arrived at each position
// and is updated with what arrives. A packet carries plan.packet_bytes / elem_bytes elements
// (elem_bytes: the element size on the wire). Returns the number of elements filled.
size_t apply_delivery(float* own, const float* recv, size_t len, const net::DeliveryPlan& plan,
                      net::Fill fill, bool reduce, ReduceOp op, float rescale, float* stale,
                      size_t elem_bytes = sizeof(float));

// apply_delivery on `dev`: the host function on the CPU; on CUDA the plan's mask is uploaded
// into `mask_scratch` (a device byte buffer, reused) and kernels/cuda applies it. The count of
// filled elements comes from the host mask either way, so counters match across devices.
size_t apply_delivery_on(Device dev, float* own, const float* recv, size_t len,
                         const net::DeliveryPlan& plan, net::Fill fill, bool reduce, ReduceOp op,
                         float rescale, float* stale, DeviceBuffer& mask_scratch,
                         size_t elem_bytes = sizeof(float));

// encode=hadamard (docs/netmodels.md): apply_delivery for a block of len floats received in the
// encoded domain (recv: overwritten with its decoded value). Lost coordinates get the fill in the
// encoded domain (zero, local and rescale in a sum: 0; stale: the encoded stale value; local and
// rescale in a gather: the encoded value of own), then the block is decoded (blocks of `block`,
// signs keyed by `key`, as the sender encoded it) and reduced into own (rescale: the decoded
// block scaled by `rescale`) or copied to it; stale (if not null) takes the decoded block.
// Returns the elements filled (in the encoded domain). CPU only: CUDA throws.
// encode=hadamard with fill=count: frac[i] = the fraction of the encoded coordinates of element
// i's Hadamard block (the layout of cpu::hadamard_encode: blocks of `block`, then the tail's
// power-of-two blocks) that arrived under `plan`. Over the random signs D the decoded block is
// D H^T M H D x (M: the arrived coordinates), whose expectation is diag(H^T M H) x = f x for an
// orthonormal H: f is the count of the contribution in that block. Host memory (CPU only).
void hadamard_arrived_fractions(float* frac, size_t len, const net::DeliveryPlan& plan, size_t block,
                                size_t elem_bytes);

size_t apply_delivery_encoded(Device dev, float* own, float* recv, size_t len,
                              const net::DeliveryPlan& plan, net::Fill fill, bool reduce, ReduceOp op,
                              float rescale, float* stale, size_t block, uint64_t key,
                              DeviceBuffer& ref_scratch, size_t elem_bytes = sizeof(float));

}  // namespace lossytp
