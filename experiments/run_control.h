// Stopping a run from outside, and telling its ranks that one of them failed.
//
// Preemption: SIGTERM, SIGINT and SIGUSR1 (what Slurm and mpirun send before a job is killed)
// only set a flag. At the end of every iteration the run's ranks agree on it (a MAX over the
// run), so all of them stop after the same iteration even when one rank alone got the signal;
// they write a checkpoint and metrics.h5 with status `interrupted`, and lossytp exits with
// kExitInterrupted. A second signal while it shuts down kills the process at once.
//
// Failures: a rank whose training throws leaves <run>/.failed-rank<R> with its message; the
// other ranks of the run, waiting for it in a collective, see the file within ~0.1 s and give up
// the wait (PeerFailed), so rank 0 marks metrics.h5 `failed` with the first failure's message
// whichever rank failed first.
#pragma once
#include <functional>
#include <string>

#include "sim/backend.h"

namespace lossytp {

// Exit status of a train or grid command stopped by a signal: every interrupted run has a
// checkpoint; `--load` (train) or the same grid command resumes it.
constexpr int kExitInterrupted = 4;

// Installs the handlers (idempotent). Before that, the signals keep their default action.
void install_stop_signals();
// The first stop signal received (SIGTERM, SIGINT, SIGUSR1), 0 when none.
int stop_signal();
// "SIGTERM" etc.
std::string signal_name(int sig);
// Testing: behave as if `sig` had been received.
void raise_stop_flag(int sig);

// A wait given up because another rank of the run failed (a CommTimeout, so that the sites'
// error messages name where it waited).
class PeerFailed : public CommTimeout {
 public:
  using CommTimeout::CommTimeout;
};

// Rank 0 of a run, before its ranks first synchronise: removes failure marks of earlier attempts.
void clear_failure_marks(const std::string& run_dir);
// A rank whose training failed: leaves its message for the others (best effort, never throws).
void mark_failure(const std::string& run_dir, int rank, const std::string& what);
// The check a backend calls while it waits: throws PeerFailed naming the failed rank and its
// message when any rank of the run but `rank` left a failure mark. Looks at most every 100 ms.
std::function<void()> peer_failure_check(const std::string& run_dir, int rank);
// The first failure mark other than `rank`'s, as "rank R failed: message", or "" when none.
std::string peer_failure(const std::string& run_dir, int rank);

}  // namespace lossytp
