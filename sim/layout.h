// Rank layout, Megatron's order: TP fastest, then CP, then DP, then PP slowest.
// rank = tp_rank + tp * (cp_rank + cp * (dp_rank + dp * pp_rank)).
#pragma once
#include <mpi.h>

#include <memory>
#include <string>

#include "sim/comm.h"

namespace lossytp {

struct Layout {
  int world = 1, rank = 0;
  int tp = 1, cp = 1, dp = 1, pp = 1;
  int tp_rank = 0, cp_rank = 0, dp_rank = 0, pp_rank = 0;

  // Validates and derives the layout. dp = 0 means "derive from the world size".
  // Throws std::invalid_argument naming the problem (world not divisible by tp x pp, ...).
  static Layout make(int world, int rank, int tp, int dp, int pp = 1, int cp = 1);
  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == pp - 1; }
  std::string describe() const;
};

// The process groups of one run, carved out of the run's communicator: a TP group (ranks that
// share a layer's shards), a CP group (the ranks that share the sequences of one micro-batch;
// group "cp"), a DP group (ranks holding the same shard in different replicas: with context
// parallelism the DP x CP ranks, over which gradients are reduced, as Megatron's dp-cp group)
// and a PP group (the stages of one model replica that hold the same TP shard; group "pp").
struct Groups {
  Layout layout;
  std::shared_ptr<CommStats> stats;
  std::unique_ptr<Comm> tp;
  std::unique_ptr<Comm> dp;
  std::unique_ptr<Comm> pp;
  std::unique_ptr<Comm> cp;
  MPI_Comm tp_comm = MPI_COMM_NULL, dp_comm = MPI_COMM_NULL, pp_comm = MPI_COMM_NULL, cp_comm = MPI_COMM_NULL;
  // Set when the run failed: its communicators may hold operations that never complete, so
  // they are left alone (not freed) rather than risk waiting on them.
  bool abandoned = false;

  Groups() = default;
  Groups(const Groups&) = delete;
  Groups& operator=(const Groups&) = delete;
  ~Groups();
};

std::unique_ptr<Groups> make_mpi_groups(MPI_Comm run_comm, const Layout& layout);

#ifdef LOSSYTP_HAVE_NCCL
// make_mpi_groups' TP/DP split with NCCL: Comms over NcclBackend on the TP and DP
// sub-communicators, working on device buffers. One GPU per rank: each rank's current CUDA
// device, chosen by the caller before this call (NCCL rejects two ranks of a communicator on one
// GPU). Collective over run_comm.
std::unique_ptr<Groups> make_nccl_groups(MPI_Comm run_comm, const Layout& layout);
#endif

class LocalWorld;
// The same groups among the virtual ranks (threads) of a LocalWorld; layout.rank is the
// thread's world rank. The Comms work on the world's device.
std::unique_ptr<Groups> make_local_groups(LocalWorld& world, const Layout& layout);

}  // namespace lossytp
