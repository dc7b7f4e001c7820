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

#include "netmodels/netmodel.h"
#include "sim/backend.h"

namespace lossytp {

struct SiteCounters;
class StaleStore;

struct HopContext {
  Backend& backend;
  const net::NetSpec* spec;  // nullptr: nothing is lost
  net::Message message;      // site, group, kind, iteration, call (src, dst, hop, bytes per hop)
  uint64_t seed;
  StaleStore* stale;
  SiteCounters& counters;
};

void ring_all_reduce(HopContext& ctx, float* buf, size_t n, ReduceOp op);
void ring_all_gather(HopContext& ctx, const float* in, float* out, size_t n_per_rank);
void ring_reduce_scatter(HopContext& ctx, const float* in, float* out, size_t n_per_rank);

// Applies a delivery plan to one received block of `len` floats (exposed for the tests).
// reduce: own[i] = op(own[i], received value or its fill); gather: own[i] = received or fill.
// stale (may be null unless fill is stale) holds the last value that arrived at each position
// and is updated with what arrives. Returns the number of elements filled.
size_t apply_delivery(float* own, const float* recv, size_t len, const net::DeliveryPlan& plan,
                      net::Fill fill, bool reduce, ReduceOp op, float rescale, float* stale);

}  // namespace lossytp
