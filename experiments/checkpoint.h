// Per-rank checkpoints: parameters, AdamW moments and step, and the iteration (the data position
// and every random draw are pure functions of the iteration, so nothing else is needed to resume
// bit-identically). Each rank writes <run>/checkpoint/rank<R>-it<I>.bin to a temporary name and
// renames it; after every rank has written, rank 0 atomically points <run>/checkpoint/latest at
// the iteration and removes older files. A kill at any moment leaves the previous checkpoint
// intact and never a half-written one in use.
#pragma once
#include <cstdint>
#include <string>

#include "models/adamw.h"
#include "models/param_store.h"
#include "sim/backend.h"

namespace lossytp {

// Collective over the run's ranks (run = the run's communicator as a Backend).
void save_checkpoint(const std::string& run_dir, Backend& run, int64_t iteration,
                     ParamStore& params, AdamW& opt, const std::string& config_json);

// The iteration of the latest complete checkpoint in run_dir, or -1 when there is none.
int64_t latest_checkpoint(const std::string& run_dir);

// Loads this rank's part of checkpoint `iteration`. Throws std::runtime_error naming the file
// when it is missing, truncated, or was written by a different layout or model.
void load_checkpoint(const std::string& run_dir, int rank, int64_t iteration, ParamStore& params,
                     AdamW& opt);

// The configuration stored with the checkpoints (JSON), "" when none.
std::string checkpoint_config(const std::string& run_dir);

}  // namespace lossytp
