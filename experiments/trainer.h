// The training loop of one run: every rank of run_comm calls train(); the ranks form
// tp x dp groups, each trains its shard, and rank 0 of the run writes <out>/metrics.h5.
#pragma once
#include <mpi.h>

#include <string>
#include <vector>

#include "experiments/dataset.h"
#include "experiments/train_config.h"
#include "sim/backend.h"
#include "sim/layout.h"

#include <functional>
#include <memory>

namespace lossytp {

struct TrainResult {
  std::string status;  // completed, diverged, interrupted (a stop signal; failures throw)
  int64_t start_iteration = 0;     // > 0 when resumed from a checkpoint
  std::vector<double> train_loss;  // per iteration (every rank has it)
  std::vector<double> eval_loss;   // per evaluation
  double tokens_per_second = 0.0;
  double observed_loss_rate = 0.0;  // packets lost / packets exposed to the model, all ranks
  // Per log interval (every rank has it): the largest relative distance between ranks' copies
  // of replicated parameters (experiments/replica_divergence.h), over DP and TP together.
  std::vector<double> replica_divergence;
  double peak_rss_bytes = 0.0;  // the largest peak resident set of the run's ranks
};

// The ranks of one run, whatever carries them (MPI processes, or threads of one process).
struct RunRanks {
  int rank = 0, size = 1;
  std::unique_ptr<Backend> run;  // the whole run's group: control traffic, checkpoints
  std::function<std::unique_ptr<Groups>(const Layout&)> make_groups;  // its TP and DP groups
};

// Throws on failure, after rank 0 has marked metrics.h5 `failed` with the message in the
// attribute `error`: its own, or that of the first rank that failed (experiments/run_control.h;
// with --comm-timeout 0 or NCCL, only when rank 0 failed or noticed through a timeout).
// A stop signal (run_control.h) ends the run after the iteration the ranks agree on, with a
// checkpoint there and status `interrupted`.
// Resumes from cfg.load's latest checkpoint when cfg.load is set. Progress lines go to stdout on
// rank 0 unless cfg.quiet.
TrainResult train(const TrainConfig& cfg, const TokenCorpus& corpus, RunRanks ranks);
// Every rank of an MPI communicator.
TrainResult train(const TrainConfig& cfg, const TokenCorpus& corpus, MPI_Comm run_comm);
// Virtual rank `rank` of a LocalWorld: every thread of the world calls it (--virtual-ranks).
TrainResult train(const TrainConfig& cfg, const TokenCorpus& corpus, LocalWorld& world, int rank);

// Why a resume cannot continue the run's metrics.h5 at `path` (`why`: MetricsFile::load's error,
// which names the file) and what to do; both `lossytp train --load` (before anything starts,
// exit status 2) and a grid's resumed run (which then fails) report it. Nothing is modified.
std::string damaged_metrics_message(const std::string& path, const std::string& why);

}  // namespace lossytp
