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

Layout Layout::make(int world, int rank, int tp, int dp, int pp, int cp) {
  if (tp < 1) throw std::invalid_argument("--tensor-model-parallel-size must be >= 1, got " + std::to_string(tp));
  if (dp < 0) throw std::invalid_argument("--data-parallel-size must be >= 1, got " + std::to_string(dp));
  if (pp < 1) throw std::invalid_argument("--pipeline-model-parallel-size must be >= 1, got " + std::to_string(pp));
  if (cp < 1) throw std::invalid_argument("--context-parallel-size must be >= 1, got " + std::to_string(cp));
  std::string model = "tp " + std::to_string(tp);  // the model's ranks, as the flags name them
  if (cp > 1) model += " x cp " + std::to_string(cp);
  if (pp > 1) model += " x pp " + std::to_string(pp);
  const int per_replica = tp * cp * pp;
  if (world % per_replica != 0)
    throw std::invalid_argument("world size " + std::to_string(world) + " is not divisible by " +
                                (per_replica == tp ? "--tensor-model-parallel-size " + std::to_string(tp) : model));
  if (dp == 0) dp = world / per_replica;
  if (per_replica * dp != world)
    throw std::invalid_argument("world size " + std::to_string(world) + " != " + model + " x dp " + std::to_string(dp) +
                                " (launch " + std::to_string(per_replica * dp) + " ranks)");
  Layout l;
  l.world = world;
  l.rank = rank;
  l.tp = tp;
  l.cp = cp;
  l.dp = dp;
  l.pp = pp;
  l.tp_rank = rank % tp;
  l.cp_rank = (rank / tp) % cp;
  l.dp_rank = (rank / (tp * cp)) % dp;
  l.pp_rank = rank / (tp * cp * dp);
  return l;
}

std::string Layout::describe() const {
  return "world " + std::to_string(world) + " = tp " + std::to_string(tp) +
         (cp > 1 ? " x cp " + std::to_string(cp) : "") + " x dp " + std::to_string(dp) +
         (pp > 1 ? " x pp " + std::to_string(pp) : "");
}

Groups::~Groups() {
  tp.reset();
  dp.reset();
  pp.reset();
  cp.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && !abandoned) {
    if (tp_comm != MPI_COMM_NULL) MPI_Comm_free(&tp_comm);
    if (dp_comm != MPI_COMM_NULL) MPI_Comm_free(&dp_comm);
    if (pp_comm != MPI_COMM_NULL) MPI_Comm_free(&pp_comm);
    if (cp_comm != MPI_COMM_NULL) MPI_Comm_free(&cp_comm);
  }
}

namespace {
// Same (cp, dp, pp) -> same TP group, ordered by tp_rank; same (tp, dp, pp) -> same CP group;
// same (tp, pp) -> same DP group (its DP x CP ranks, ordered by (dp, cp)); same (tp, cp, dp) ->
// same PP group, ordered by stage.
std::unique_ptr<Groups> split_groups(MPI_Comm run_comm, const Layout& l) {
  auto g = std::make_unique<Groups>();
  g->layout = l;
  g->stats = std::make_shared<CommStats>();
  MPI_Comm_split(run_comm, l.cp_rank + l.cp * (l.dp_rank + l.dp * l.pp_rank), l.tp_rank, &g->tp_comm);
  MPI_Comm_split(run_comm, l.tp_rank + l.tp * (l.dp_rank + l.dp * l.pp_rank), l.cp_rank, &g->cp_comm);
  MPI_Comm_split(run_comm, l.tp_rank + l.tp * l.pp_rank, l.cp_rank + l.cp * l.dp_rank, &g->dp_comm);
  MPI_Comm_split(run_comm, l.tp_rank + l.tp * (l.cp_rank + l.cp * l.dp_rank), l.pp_rank, &g->pp_comm);
  return g;
}
}  // namespace

std::unique_ptr<Groups> make_mpi_groups(MPI_Comm run_comm, const Layout& layout) {
  auto g = split_groups(run_comm, layout);
  g->tp = std::make_unique<Comm>(std::make_unique<MpiBackend>(g->tp_comm), "tp", g->stats);
  g->dp = std::make_unique<Comm>(std::make_unique<MpiBackend>(g->dp_comm), "dp", g->stats);
  g->pp = std::make_unique<Comm>(std::make_unique<MpiBackend>(g->pp_comm), "pp", g->stats);
  g->cp = std::make_unique<Comm>(std::make_unique<MpiBackend>(g->cp_comm), "cp", g->stats);
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
  g->pp = std::make_unique<Comm>(make_nccl_backend(g->pp_comm), "pp", g->stats);
  g->cp = std::make_unique<Comm>(make_nccl_backend(g->cp_comm), "cp", g->stats);
  g->tp->set_device(Device::CUDA);
  g->dp->set_device(Device::CUDA);
  g->pp->set_device(Device::CUDA);
  g->cp->set_device(Device::CUDA);
  return g;
}
#endif

}  // namespace lossytp

namespace lossytp {

std::unique_ptr<Groups> make_local_groups(LocalWorld& world, const Layout& l) {
  auto g = std::make_unique<Groups>();
  g->layout = l;
  g->stats = std::make_shared<CommStats>();
  // world rank of (tp t, cp c, dp d, stage p)
  auto at = [&l](int t, int c, int d, int p) { return t + l.tp * (c + l.cp * (d + l.dp * p)); };
  std::vector<int> tp_members, cp_members, dp_members, pp_members;
  for (int t = 0; t < l.tp; ++t) tp_members.push_back(at(t, l.cp_rank, l.dp_rank, l.pp_rank));
  for (int c = 0; c < l.cp; ++c) cp_members.push_back(at(l.tp_rank, c, l.dp_rank, l.pp_rank));
  for (int d = 0; d < l.dp; ++d)
    for (int c = 0; c < l.cp; ++c) dp_members.push_back(at(l.tp_rank, c, d, l.pp_rank));
  for (int p = 0; p < l.pp; ++p) pp_members.push_back(at(l.tp_rank, l.cp_rank, l.dp_rank, p));
  g->tp = std::make_unique<Comm>(world.group("tp", tp_members, l.rank), "tp", g->stats);
  g->dp = std::make_unique<Comm>(world.group("dp", dp_members, l.rank), "dp", g->stats);
  g->pp = std::make_unique<Comm>(world.group("pp", pp_members, l.rank), "pp", g->stats);
  g->cp = std::make_unique<Comm>(world.group("cp", cp_members, l.rank), "cp", g->stats);
  for (Comm* c : {g->tp.get(), g->dp.get(), g->pp.get(), g->cp.get()}) c->set_device(world.device());
  return g;
}

}  // namespace lossytp
