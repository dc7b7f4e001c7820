// Tensor and data parallelism change how the work is split, not the numbers: loss trajectories
// of TP=2, TP=4 and DP=2 runs match the single-rank run over 20 iterations.
#include <catch2/catch.hpp>

#include <cmath>

#include "experiments/trainer.h"
#include "mpi_helpers.h"

using namespace lossytp;
using namespace lossytp::testing;

namespace {

// Runs the reference on rank 0 alone, shares its trajectory with every rank.
std::vector<double> reference_losses(TrainConfig ref, const TokenCorpus& corpus, const std::string& dir) {
  std::vector<double> losses(ref.train_iters, 0.0);
  if (world_rank() == 0) {
    ref.out = dir + "/ref";
    losses = train(ref, corpus, MPI_COMM_SELF).train_loss;
  }
  MPI_Bcast(losses.data(), static_cast<int>(losses.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return losses;
}

void compare(const std::vector<double>& ref, const std::vector<double>& got) {
  REQUIRE(got.size() == ref.size());
  double worst = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(got[i] - ref[i]) / std::abs(ref[i]));
  INFO("first loss " << ref.front() << ", last " << ref.back() << ", worst relative difference " << worst);
  CHECK(worst <= 1e-5);
  CHECK(ref.back() < ref.front() - 0.3);  // it is really training
}

void run_equivalence(int tp, int dp, int micro, int global, bool llama = false) {
  const std::string dir = shared_tmpdir("equiv-tp" + std::to_string(tp) + "dp" + std::to_string(dp) +
                                        (llama ? "-llama" : ""));
  auto config = llama ? small_llama_config : small_config;
  TrainConfig cfg = config(tp, dp, micro, global, 20);
  TokenCorpus corpus = load_corpus(cfg.data);
  TrainConfig ref = config(1, 1, micro, global, 20);
  auto expected = reference_losses(ref, corpus, dir);
  cfg.out = dir + "/run";
  auto got = train(cfg, corpus, MPI_COMM_WORLD).train_loss;
  compare(expected, got);
}

}  // namespace

TEST_CASE("TP=2 matches TP=1 over 20 iterations", "[np2]") { run_equivalence(2, 1, 4, 4); }
TEST_CASE("DP=2 matches DP=1 at the same global batch", "[np2]") { run_equivalence(1, 2, 4, 8); }
TEST_CASE("TP=4 matches TP=1 over 20 iterations", "[np4]") { run_equivalence(4, 1, 4, 4); }
TEST_CASE("TP=2 x DP=2 with accumulation matches TP=1", "[np4]") { run_equivalence(2, 2, 2, 8); }
TEST_CASE("Llama blocks: TP=2 matches TP=1", "[np2]") { run_equivalence(2, 1, 4, 4, true); }
TEST_CASE("Llama blocks: DP=2 matches DP=1", "[np2]") { run_equivalence(1, 2, 4, 8, true); }
TEST_CASE("Llama blocks: TP=4 matches TP=1", "[np4]") { run_equivalence(4, 1, 4, 4, true); }
