// Experiment grids: `lossytp grid FILE.toml --out DIR`, launched under mpirun. The TOML file has
//   [base]    train settings shared by every run (keys = train flags without dashes)
//   [sweep]   arrays, expanded as a Cartesian product; `seeds = [..]` (or `seed`) sweeps the seed
//   [[runs]]  single runs: base plus the entry's keys
// Each run gets DIR/<run-id>/metrics.h5 (and checkpoints), with a stable, readable id made of
// its swept values ("net=ge-one_tp=2_seed=1", hashed when long). The world is split into groups
// of tp x dp ranks that train runs side by side, round after round; after every round rank 0
// records every run's status in DIR/grid.json and prints progress. Re-running the same command
// skips finished runs (completed or diverged), resumes unfinished ones from their checkpoints,
// and refuses a changed grid file unless --force.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "experiments/train_config.h"

namespace lossytp {

struct GridRun {
  std::string id;
  TrainConfig cfg;       // resolved; cfg.out = DIR/<id>
  nlohmann::json swept;  // the values this run's id is made of, keyed by config key
  int ranks() const { return cfg.tp * cfg.cp * cfg.dp * cfg.pp; }
};

struct Grid {
  std::string file;
  std::string file_hash;  // of the file's text, to notice a changed grid
  std::vector<GridRun> runs;
};

// Parses and expands a grid file and resolves every run's configuration (before anything runs).
// Throws std::invalid_argument naming the file, key or run on any problem: unreadable file, TOML
// syntax, unknown table or key, a sweep value that is not a non-empty array, an invalid run.
Grid load_grid(const std::string& path, const std::string& out_dir);

// A run id's text for one value: specs become "ge-one", "drop-0.01", "caat-0.5+ge-one".
std::string id_value(const std::string& key, const std::string& value);

struct GridOptions {
  std::string file;
  std::string out;
  bool force = false;
  int virtual_ranks = 0;  // > 0: one process, runs on this many ranks as threads (no mpirun)
  bool verbose = false;  // a progress line of every run at every log interval (else ~5 per run)
  bool dry_run = false;  // list the runs (id, layout, ranks, status, time estimate); train and write nothing
};

// Runs the grid on MPI_COMM_WORLD (every rank calls it). With dry_run: validates every run as a
// real start would (configuration, data, memory), prints the runs and a time estimate, and
// returns without training or writing anything. Returns the exit status: 0 when every
// run finished (completed or diverged), 1 when some failed, 2 for bad input (one message), 4
// (kExitInterrupted) when a stop signal interrupted it: the running runs stopped with a
// checkpoint (status `interrupted`), and re-running the command resumes them.
int run_grid(const GridOptions& opt);

}  // namespace lossytp
