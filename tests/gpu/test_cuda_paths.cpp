// GPU code paths the other model tests do not reach: CAAT-Net's partial synchronisation (column
// packing and scaling, the bias gradient after the reduce) and checkpoints of device parameters
// and optimiser state (save, then resume). Part of lossytp_gpu_tests, and of the fake_cuda test
// (tests/fake_cuda), which runs them without a GPU.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/run_virtual.h"
#include "common/small_config.h"
#include "experiments/checkpoint.h"
#include "experiments/dataset.h"
#include "experiments/trainer.h"
#include "sim/local_backend.h"

using namespace lossytp;
using testing::run_virtual;
using testing::worst_relative;
namespace fs = std::filesystem;

namespace {

TrainConfig on(TrainConfig c, const char* device) {
  c.comm_timeout = 120;
  c.device = device;
  return c;
}

// Every rank's result or error (cfg.out is kept: the caller owns it).
struct Ranks {
  std::vector<TrainResult> results;
  std::vector<std::string> errors;
};
Ranks run_ranks(const TrainConfig& cfg, const TokenCorpus& corpus) {
  const int n = cfg.tp * cfg.dp;
  LocalWorld world(n, cfg.compute().device);
  Ranks out;
  out.results.resize(n);
  out.errors.resize(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        out.results[r] = train(cfg, corpus, world, r);
      } catch (const std::exception& e) {
        out.errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  return out;
}

}  // namespace

TEST_CASE("GPU training: CAAT partial synchronisation gives the CPU's trajectory", "[model][caat]") {
  TrainConfig c = testing::small_config(2, 1, 4, 8, 10);
  c.net = "caat:p=0.5";
  const auto cpu = run_virtual(on(c, "cpu"), "caat-cpu").train_loss;
  const auto gpu = run_virtual(on(c, "cuda"), "caat-cuda").train_loss;
  CHECK(worst_relative(gpu, cpu) <= 1e-4);
}

TEST_CASE("GPU training: resuming from a checkpoint gives the uninterrupted trajectory", "[model][checkpoint]") {
  const fs::path dir = fs::temp_directory_path() / ("lossytp-gpu-resume-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  TrainConfig cfg = on(testing::small_config(2, 1, 4, 4, 20), "cuda");
  cfg.net = "ge:preset=one";  // the loss pattern must resume too
  const TokenCorpus corpus = load_corpus(cfg.data);

  TrainConfig whole = cfg;
  whole.out = (dir / "whole").string();
  const Ranks w = run_ranks(whole, corpus);
  for (const auto& e : w.errors) REQUIRE(e.empty());
  const std::vector<double> expected = w.results[0].train_loss;
  REQUIRE(expected.size() == 20);

  TrainConfig broken = cfg;
  broken.out = (dir / "broken").string();
  broken.save_interval = 5;
  broken.debug_fail_at = 13;  // rank 0 fails at iteration 13; rank 1 times out
  broken.comm_timeout = 3;
  const Ranks b = run_ranks(broken, corpus);
  CHECK(!b.errors[0].empty());
  CHECK(latest_checkpoint(broken.out) == 10);

  TrainConfig resumed = cfg;
  resumed.out = broken.out;
  resumed.load = broken.out;
  resumed.save_interval = 5;
  const Ranks r = run_ranks(resumed, corpus);
  for (const auto& e : r.errors) REQUIRE(e.empty());
  CHECK(r.results[0].start_iteration == 10);
  const std::vector<double>& got = r.results[0].train_loss;
  REQUIRE(got.size() == 10);  // iterations 11..20
  // the same arithmetic as the whole run (on a GPU up to embedding_backward's atomic adds)
  CHECK(worst_relative(got, std::vector<double>(expected.begin() + 10, expected.end())) <= 1e-5);
  fs::remove_all(dir);
}
