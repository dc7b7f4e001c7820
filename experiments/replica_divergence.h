// Replica divergence: how far ranks' copies of data that should be identical have drifted
// apart. Lossy ring collectives (a lost packet removes a partial sum on one hop) and losses in
// the distributed optimizer's parameter all-gather (dp.param) leave replicas disagreeing; an
// exact run keeps them bit-identical (divergence exactly 0).
//  - DP: every parameter of the arena, each DP rank's copy against DP rank 0's;
//  - TP: the replicated parameters (ParamSpec::shard_dim < 0: norms, row-parallel biases,
//    learned positions), each TP rank's copy against TP rank 0's.
// For each parameter p and rank r: ||x_r - x_root|| / ||x_root|| (||x_r|| when the root's copy
// is zero); the value is the largest over parameters and ranks (+inf for a non-finite one).
// Measured over the groups' raw backends (never lossy, never counted), one parameter chunk at a
// time: O(parameters) traffic, O(chunk) memory, so it does not perturb the experiment.
#pragma once

#include <algorithm>

#include "models/param_store.h"
#include "sim/backend.h"

namespace lossytp {

struct ReplicaDivergence {
  double dp = 0.0, tp = 0.0;
  double max() const { return std::max(dp, tp); }
};

// Collective over every rank of the run (tp and dp are this rank's groups' backends, run the
// run's). Every rank gets the result.
ReplicaDivergence measure_replica_divergence(ParamStore& params, Backend& tp, Backend& dp, Backend& run);

}  // namespace lossytp
