// The distributed optimizer (--use-distributed-optimizer, ZeRO-1) changes where the optimizer
// state lives and which DP collectives run (reduce-scatter of gradients, all-gather of
// parameters), not the numbers: DP=2 and TP=2 x DP=2 match the single-rank run over 20
// iterations, with gradient clipping active (the global norm summed from the shards).
#include <catch2/catch.hpp>

#include <cmath>

#include "experiments/trainer.h"
#include "mpi_helpers.h"

using namespace lossytp;
using namespace lossytp::testing;

namespace {

void run_zero_equivalence(int tp, int dp, int micro, int global) {
  const std::string dir = shared_tmpdir("zero-tp" + std::to_string(tp) + "dp" + std::to_string(dp));
  TrainConfig ref = small_config(1, 1, micro, global, 20);
  ref.clip_grad = 0.5f;  // clipping is active: the global norm must be right
  TokenCorpus corpus = load_corpus(ref.data);
  std::vector<double> expected(ref.train_iters, 0.0);
  if (world_rank() == 0) {
    ref.out = dir + "/ref";
    expected = train(ref, corpus, MPI_COMM_SELF).train_loss;
  }
  MPI_Bcast(expected.data(), static_cast<int>(expected.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  TrainConfig cfg = small_config(tp, dp, micro, global, 20);
  cfg.clip_grad = 0.5f;
  cfg.use_distributed_optimizer = true;
  cfg.out = dir + "/run";
  const TrainResult got = train(cfg, corpus, MPI_COMM_WORLD);
  REQUIRE(got.train_loss.size() == expected.size());
  double worst = 0.0;
  for (size_t i = 0; i < expected.size(); ++i)
    worst = std::max(worst, std::abs(got.train_loss[i] - expected[i]) / std::abs(expected[i]));
  INFO("first loss " << expected.front() << ", last " << expected.back() << ", worst relative difference " << worst);
  CHECK(worst <= 1e-5);
  CHECK(expected.back() < expected.front() - 0.3);
  // an exact network keeps the replicas bit-identical
  REQUIRE(!got.replica_divergence.empty());
  for (double d : got.replica_divergence) CHECK(d == 0.0);
  CHECK(got.peak_rss_bytes > 0);
}

}  // namespace

TEST_CASE("distributed optimizer: DP=2 matches DP=1 at the same global batch", "[np2]") {
  run_zero_equivalence(1, 2, 4, 8);
}
TEST_CASE("distributed optimizer: TP=2 x DP=2 with accumulation matches TP=1", "[np4]") {
  run_zero_equivalence(2, 2, 2, 8);
}
