// What a run will hold and move, before it starts: --dry-run's report, and the memory check
// that stops a run too large for its machine before training.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "experiments/train_config.h"

namespace lossytp {

// The resolved model and layout: parameters (Hugging Face's count, and this run's per rank with
// the padded vocabulary), memory per rank (weights, gradients, AdamW state, activations, bytes)
// and the bytes each communication site puts on the wire per iteration per rank (ring
// algorithm, as metrics.h5's /comm/ counts them; exact network). Builds the model's layout
// only: nothing large is allocated.
nlohmann::json plan_run(const TrainConfig& cfg);
// The same, as a human-readable text.
std::string describe_plan(const nlohmann::json& plan);

// "" when `ranks_here` ranks of this run fit in `available` bytes, else a message with both
// numbers. estimate: one rank's bytes.
std::string check_memory(double estimate, int ranks_here, double available, Device dev);

}  // namespace lossytp
