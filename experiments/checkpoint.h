// Per-rank checkpoints: parameters, AdamW moments and step, and the iteration (the data position
// and every random draw are pure functions of the iteration, so nothing else is needed to resume
// bit-identically). Each rank writes <run>/checkpoint/rank<R>-it<I>.bin to a temporary name and
// renames it; after every rank has written, rank 0 atomically points <run>/checkpoint/latest at
// the iteration and removes all but the newest `keep` checkpoints. A kill at any moment leaves
// the previous checkpoint intact and never a half-written one in use.
//
// File format (version 2, little-endian): a 48-byte header (magic "LTPCKPT2", iteration, floats
// per arena, AdamW step, rank, TP rank, TP size, optimizer shards), the parameters, the AdamW
// first and second moments (fp32 each), then 8 bytes: the XXH3-64 checksum (libxxhash) of
// everything before it. Optimizer shards (the header's last field, always 0 in older files):
// 0 when the moments cover the whole arena; D > 1 with --use-distributed-optimizer over D DP
// ranks: each moment is then this rank's shard of optimizer_shard_numel(floats, D) floats
// (models/adamw.h) and a resume needs the same setting.
// Version 1 files ("LTPCKPT1", lossytp <= 0.1.0) have no checksum: they are still read, with a
// warning that their contents cannot be verified, after their size is checked.
// Version 3 ("LTPCKPT3"), written only when there is per-rank state besides the arenas: version 2
// with, between the moments and the checksum, a u64 byte count S and S bytes of sections, each an
// 8-byte tag, a u64 length and its payload (readers skip unknown tags). The one section so far:
// "netlinks", the rank's network link chains (net::LinkStates::serialize, ge ...,state=link), so
// a resumed run continues every chain where it stopped. A file without it (version 1 or 2, or a
// run without state=link) means no chain has started: exactly the state of such a run, so a
// state=link resume never needs to refuse one.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/adamw.h"
#include "models/param_store.h"
#include "sim/backend.h"

namespace lossytp {

// Collective over the run's ranks (run = the run's communicator as a Backend). keep: how many
// of the newest checkpoints stay on disk (0: all). Throws naming the file when a write fails
// (a full disk, say): the previous checkpoints and `latest` are then untouched.
// net_links: this rank's serialized link chains (empty: none, a version-2 file).
void save_checkpoint(const std::string& run_dir, Backend& run, int64_t iteration,
                     ParamStore& params, AdamW& opt, const std::string& config_json, int keep = 2,
                     const std::vector<uint8_t>& net_links = {});

// The iteration `latest` points at in run_dir, or -1 when there is none.
int64_t latest_checkpoint(const std::string& run_dir);

// The iterations, newest first, at or before `latest`, for which every one of nranks ranks has a
// file (not yet checked for corruption).
std::vector<int64_t> checkpoint_iterations(const std::string& run_dir, int nranks);

// checkpoint/rank<R>-it<I>.bin of run_dir.
std::string checkpoint_file(const std::string& run_dir, int rank, int64_t iteration);

struct CheckpointCheck {
  bool ok = false;
  bool checksummed = false;  // false: a version-1 file, its size checked but not its contents
  std::string problem;       // when !ok: what is wrong, naming the file
};
// Reads the whole file: its header, its size against the header, and its checksum.
CheckpointCheck verify_checkpoint_file(const std::string& run_dir, int rank, int64_t iteration);

struct ResumePoint {
  int64_t iteration = -1;             // the newest intact complete checkpoint; -1: none
  std::vector<std::string> problems;  // why each newer one (or, when none, every one) is unusable
  std::vector<std::string> warnings;  // files of the chosen one that carry no checksum
};
// Verifies every rank's file of the complete checkpoints, newest first, until one is intact.
ResumePoint find_resume_point(const std::string& run_dir, int nranks);

// Loads this rank's part of checkpoint `iteration`, verifying its checksum as it reads. Throws
// std::runtime_error naming the file when it is missing, truncated, corrupt, or was written by
// a different layout or model (the parameters may then be partly overwritten). net_links (if not
// null) receives the file's "netlinks" section, empty when it has none.
void load_checkpoint(const std::string& run_dir, int rank, int64_t iteration, ParamStore& params,
                     AdamW& opt, std::vector<uint8_t>* net_links = nullptr);

// The parameter arena (floats in ParamStore layout) of one rank's file of checkpoint `iteration`,
// and the TP rank and size that wrote it; for `lossytp export`, after find_resume_point has
// verified the file. Throws naming the file when it cannot be read.
std::vector<float> read_checkpoint_values(const std::string& run_dir, int rank, int64_t iteration,
                                          int* tp_rank, int* tp_size);

// Collective over the run's ranks: loads the newest checkpoint whose every rank's file is intact
// (each rank verifies its own file as it loads it; all agree before one is taken), trying `latest`
// first and then the older complete ones. Returns its iteration; *note then says which newer
// ones were passed over and why ("" when `latest` itself was taken). Throws naming the files
// when none is intact.
int64_t load_intact_checkpoint(const std::string& run_dir, Backend& run, ParamStore& params, AdamW& opt,
                               std::string* note, std::vector<uint8_t>* net_links = nullptr);

// The configuration stored with the checkpoints (JSON), "" when none.
std::string checkpoint_config(const std::string& run_dir);

}  // namespace lossytp
