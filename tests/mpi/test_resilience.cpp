// Runs that are interrupted, diverge or fail: resuming from a checkpoint reproduces the
// uninterrupted trajectory, a NaN marks the run diverged, a failure or a hung peer fails the run
// (with the message in metrics.h5) instead of hanging.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>

#include <chrono>
#include <csignal>

#include "experiments/checkpoint.h"
#include "experiments/run_control.h"
#include "experiments/metrics_file.h"
#include "experiments/trainer.h"
#include "mpi_helpers.h"

using namespace lossytp;
using namespace lossytp::testing;

TEST_CASE("resuming from a checkpoint gives the uninterrupted trajectory", "[np2]") {
  const std::string dir = shared_tmpdir("resume");
  TrainConfig cfg = small_config(2, 1, 4, 4, 20);
  cfg.net = "ge:preset=one";  // the loss pattern must resume exactly too
  TokenCorpus corpus = load_corpus(cfg.data);

  TrainConfig whole = cfg;
  whole.out = dir + "/whole";
  auto expected = train(whole, corpus, MPI_COMM_WORLD).train_loss;

  TrainConfig broken = cfg;
  broken.out = dir + "/broken";
  broken.save_interval = 5;
  broken.debug_fail_at = 13;  // rank 0 dies at iteration 13; rank 1 gives up waiting for it
  broken.comm_timeout = 3;
  CHECK_THROWS(train(broken, corpus, MPI_COMM_WORLD));
  MPI_Barrier(MPI_COMM_WORLD);
  CHECK(latest_checkpoint(broken.out) == 10);

  TrainConfig resumed = cfg;
  resumed.out = broken.out;
  resumed.load = broken.out;
  resumed.save_interval = 5;
  TrainResult r = train(resumed, corpus, MPI_COMM_WORLD);
  CHECK(r.start_iteration == 10);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() != 0) return;
  MetricsFile f = MetricsFile::load(broken.out + "/metrics.h5");
  CHECK(std::get<std::string>(f.attrs().at("status")) == "completed");
  const auto& loss = *f.series("train/loss");
  const auto& its = *f.int_series("train/iteration");
  REQUIRE(loss.size() == 20);  // rows 11-12 of the failed attempt were dropped, not duplicated
  for (size_t i = 0; i < 20; ++i) {
    CHECK(its[i] == static_cast<int64_t>(i + 1));
    CHECK(loss[i] == expected[i]);  // bit-identical
  }
  CHECK(f.int_series("comm/iteration")->size() == 20);
}

TEST_CASE("a NaN loss marks the run diverged and stops it", "[np2]") {
  const std::string dir = shared_tmpdir("nan");
  TrainConfig cfg = small_config(2, 1, 4, 4, 20);
  cfg.out = dir + "/nan";
  cfg.debug_nan_at = 7;
  TokenCorpus corpus = load_corpus(cfg.data);
  TrainResult r = train(cfg, corpus, MPI_COMM_WORLD);
  CHECK(r.status == "diverged");
  CHECK(r.train_loss.size() == 7);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() != 0) return;
  MetricsFile f = MetricsFile::load(cfg.out + "/metrics.h5");
  CHECK(std::get<std::string>(f.attrs().at("status")) == "diverged");
}

TEST_CASE("a loss above --max-loss marks the run diverged", "[np2]") {
  const std::string dir = shared_tmpdir("maxloss");
  TrainConfig cfg = small_config(2, 1, 4, 4, 20);
  cfg.out = dir + "/run";
  cfg.max_loss = 1.0;  // the first loss is ~ln(256) = 5.5
  TokenCorpus corpus = load_corpus(cfg.data);
  CHECK(train(cfg, corpus, MPI_COMM_WORLD).status == "diverged");
}

TEST_CASE("a failure fails the run with its message instead of hanging", "[np2]") {
  const std::string dir = shared_tmpdir("fail");
  TrainConfig cfg = small_config(2, 1, 4, 4, 20);
  cfg.out = dir + "/run";
  cfg.debug_fail_at = 4;
  cfg.comm_timeout = 2;
  TokenCorpus corpus = load_corpus(cfg.data);
  std::string what;
  try {
    train(cfg, corpus, MPI_COMM_WORLD);
  } catch (const std::exception& e) {
    what = e.what();
  }
  if (world_rank() == 0) CHECK_THAT(what, Catch::Contains("injected failure"));
  // the peer waited in a collective, names the site and gives up because rank 0 failed
  if (world_rank() == 1) {
    CHECK_THAT(what, Catch::Contains("rank 0 failed: injected failure"));
    CHECK_THAT(what, Catch::Contains("site '"));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() != 0) return;
  MetricsFile f = MetricsFile::load(cfg.out + "/metrics.h5");
  CHECK(std::get<std::string>(f.attrs().at("status")) == "failed");
  CHECK_THAT(std::get<std::string>(f.attrs().at("error")), Catch::Contains("injected failure"));
}

TEST_CASE("a non-zero rank that fails first fails the run with its message, without a timeout", "[np2]") {
  const std::string dir = shared_tmpdir("fail_rank1");
  TrainConfig cfg = small_config(2, 1, 4, 4, 20);
  cfg.out = dir + "/run";
  cfg.debug_fail_at = 4;
  cfg.debug_fail_rank = 1;
  cfg.comm_timeout = 120;  // rank 0 must not wait for it
  TokenCorpus corpus = load_corpus(cfg.data);
  std::string what;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    train(cfg, corpus, MPI_COMM_WORLD);
  } catch (const std::exception& e) {
    what = e.what();
  }
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60));
  if (world_rank() == 0) CHECK_THAT(what, Catch::Contains("rank 1 failed: injected failure at iteration 4"));
  if (world_rank() == 1) CHECK_THAT(what, Catch::Contains("injected failure"));
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() != 0) return;
  MetricsFile f = MetricsFile::load(cfg.out + "/metrics.h5");
  CHECK(std::get<std::string>(f.attrs().at("status")) == "failed");
  CHECK_THAT(std::get<std::string>(f.attrs().at("error")), Catch::Contains("rank 1 failed: injected failure"));
}

TEST_CASE("a stop signal on one rank stops every rank with a checkpoint; resuming is bit-identical", "[np2]") {
  const std::string dir = shared_tmpdir("interrupt");
  TrainConfig cfg = small_config(2, 1, 4, 4, 12);
  cfg.net = "ge:preset=one";
  TokenCorpus corpus = load_corpus(cfg.data);
  TrainConfig whole = cfg;
  whole.out = dir + "/whole";
  const auto expected = train(whole, corpus, MPI_COMM_WORLD).train_loss;

  TrainConfig part = cfg;
  part.out = dir + "/part";  // no --save-interval: the interruption writes a checkpoint anyway
  for (int stop_at : {1, 2}) {  // two interruptions: of the fresh run, then of the resumed one
    if (stop_at > 1) part.load = part.out;
    if (world_rank() == 1) raise_stop_flag(SIGTERM);  // as if only rank 1 got the signal
    const TrainResult r = train(part, corpus, MPI_COMM_WORLD);
    raise_stop_flag(0);
    CHECK(r.status == "interrupted");
    CHECK(r.start_iteration + static_cast<int64_t>(r.train_loss.size()) == stop_at);
    MPI_Barrier(MPI_COMM_WORLD);
    CHECK(latest_checkpoint(part.out) == stop_at);
    if (world_rank() == 0) {
      MetricsFile f = MetricsFile::load(part.out + "/metrics.h5");
      CHECK(std::get<std::string>(f.attrs().at("status")) == "interrupted");
      CHECK(f.series("train/loss")->size() == static_cast<size_t>(stop_at));
    }
  }
  part.load = part.out;
  const TrainResult r = train(part, corpus, MPI_COMM_WORLD);
  CHECK(r.status == "completed");
  CHECK(r.start_iteration == 2);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() != 0) return;
  MetricsFile f = MetricsFile::load(part.out + "/metrics.h5");
  CHECK(std::get<std::string>(f.attrs().at("status")) == "completed");
  const auto& loss = *f.series("train/loss");
  REQUIRE(loss.size() == expected.size());
  for (size_t i = 0; i < loss.size(); ++i) CHECK(loss[i] == expected[i]);  // bit-identical
}
