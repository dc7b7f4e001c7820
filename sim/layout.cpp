#include "sim/layout.h"

#include <stdexcept>

#include "sim/local_backend.h"
#include "sim/mpi_backend.h"

#ifdef LOSSYTP_HAVE_NCCL
#include "kernels/cuda/ops.h"
#include "kernels/cuda_plugin.h"
#include "sim/nccl_backend.h"
#endif

namespace lossytp {

Layout Layout::make(int world, int rank, int tp, int dp) {
  if (tp < 1) throw std::invalid_argument("--tensor-model-parallel-size must be >= 1, got " + std::to_string(tp));
  if (dp < 0) throw std::invalid_argument("--data-parallel-size must be >= 1, got " + std::to_string(dp));
  if (world % tp != 0)
    throw std::invalid_argument("world size " + std::to_string(world) +
                                " is not divisible by --tensor-model-parallel-size " +
                                std::to_string(tp));
  if (dp == 0) dp = world / tp;
  if (tp * dp != world)
    throw std::invalid_argument("world size " + std::to_string(world) + " != tp " +
                                std::to_string(tp) + " x dp " + std::to_string(dp) +
                                " (launch " + std::to_string(tp * dp) + " ranks)");
  Layout l;
  l.world = world;
  l.rank = rank;
  l.tp = tp;
  l.dp = dp;
  l.tp_rank = rank % tp;
  l.dp_rank = (rank / tp) % dp;
  return l;
}

std::string Layout::describe() const {
  return "world " + std::to_string(world) + " = tp " + std::to_string(tp) + " x dp " +
         std::to_string(dp);
}

Groups::~Groups() {
  tp.reset();
  dp.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && !abandoned) {
    if (tp_comm != MPI_COMM_NULL) MPI_Comm_free(&tp_comm);
    if (dp_comm != MPI_COMM_NULL) MPI_Comm_free(&dp_comm);
  }
}

namespace {
// Same dp index -> same TP group, ordered by tp_rank; same tp index -> same DP group.
std::unique_ptr<Groups> split_groups(MPI_Comm run_comm, const Layout& layout) {
  auto g = std::make_unique<Groups>();
  g->layout = layout;
  g->stats = std::make_shared<CommStats>();
  MPI_Comm_split(run_comm, layout.dp_rank, layout.tp_rank, &g->tp_comm);
  MPI_Comm_split(run_comm, layout.tp_rank, layout.dp_rank, &g->dp_comm);
  return g;
}
}  // namespace

std::unique_ptr<Groups> make_mpi_groups(MPI_Comm run_comm, const Layout& layout) {
  auto g = split_groups(run_comm, layout);
  g->tp = std::make_unique<Comm>(std::make_unique<MpiBackend>(g->tp_comm), "tp", g->stats);
  g->dp = std::make_unique<Comm>(std::make_unique<MpiBackend>(g->dp_comm), "dp", g->stats);
  return g;
}

#ifdef LOSSYTP_HAVE_NCCL
std::unique_ptr<Backend> make_nccl_backend(MPI_Comm comm) {
  // The backend lives in the GPU plugin, with NCCL (kernels/cuda_plugin.h).
  auto make = reinterpret_cast<decltype(&lossytp_new_nccl_backend)>(
      cuda::plugin_symbol("lossytp_new_nccl_backend"));
  if (!make) throw std::runtime_error("the GPU plugin has no NCCL backend (lossytp_new_nccl_backend)");
  return std::unique_ptr<Backend>(make(comm));
}

std::unique_ptr<Groups> make_nccl_groups(MPI_Comm run_comm, const Layout& layout) {
  if (const std::string why = cuda::plugin_error(); !why.empty()) throw std::runtime_error(why);
  if (cuda::device_count() < 1) throw std::runtime_error("the NCCL backend needs a GPU, and none is visible");
  auto g = split_groups(run_comm, layout);
  // Every rank creates its TP communicator, then its DP one: NCCL's init is collective over
  // each, and the same order everywhere cannot deadlock.
  g->tp = std::make_unique<Comm>(make_nccl_backend(g->tp_comm), "tp", g->stats);
  g->dp = std::make_unique<Comm>(make_nccl_backend(g->dp_comm), "dp", g->stats);
  g->tp->set_device(Device::CUDA);
  g->dp->set_device(Device::CUDA);
  return g;
}
#endif

}  // namespace lossytp

namespace lossytp {

std::unique_ptr<Groups> make_local_groups(LocalWorld& world, const Layout& l) {
  auto g = std::make_unique<Groups>();
  g->layout = l;
  g->stats = std::make_shared<CommStats>();
  std::vector<int> tp_members, dp_members;
  for (int t = 0; t < l.tp; ++t) tp_members.push_back(t + l.tp * l.dp_rank);
  for (int d = 0; d < l.dp; ++d) dp_members.push_back(l.tp_rank + l.tp * d);
  g->tp = std::make_unique<Comm>(world.group("tp", tp_members, l.rank), "tp", g->stats);
  g->dp = std::make_unique<Comm>(world.group("dp", dp_members, l.rank), "dp", g->stats);
  g->tp->set_device(world.device());
  g->dp->set_device(world.device());
  return g;
}

}  // namespace lossytp
