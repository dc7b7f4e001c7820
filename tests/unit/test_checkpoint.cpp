// Checksummed checkpoints (experiments/checkpoint.h) on virtual ranks: every file verifies, a
// flipped byte or a truncation is named and resume falls back to the newest intact checkpoint
// (bit-identically), --keep-checkpoints retention, version-1 files without a checksum, and a disk
// that fills up while a checkpoint is written (injected ENOSPC) leaves the previous one intact.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "common/small_config.h"
#include "experiments/checkpoint.h"
#include "experiments/dataset.h"
#include "experiments/trainer.h"
#include "sim/local_backend.h"

using namespace lossytp;
namespace fs = std::filesystem;

namespace {

struct Outcome {
  std::vector<TrainResult> results;
  std::vector<std::string> errors;
};

// Trains cfg on tp x dp virtual ranks into `out`; every rank's result or error.
Outcome run_ranks(TrainConfig cfg, const std::string& out) {
  const int n = cfg.tp * cfg.dp;
  cfg.out = out;
  TokenCorpus corpus = load_corpus(cfg.data);
  LocalWorld world(n, cfg.compute().device);
  Outcome o;
  o.results.resize(n);
  o.errors.resize(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        o.results[r] = train(cfg, corpus, world, r);
      } catch (const std::exception& e) {
        o.errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  return o;
}

TrainConfig ck_config(int iters) {
  TrainConfig c = testing::small_config(2, 1, 4, 4, iters);
  c.comm_timeout = 20;
  c.save_interval = 5;
  return c;
}

std::string tmpdir(const std::string& tag) {
  const fs::path p = fs::temp_directory_path() / ("lossytp-ckpt-" + tag + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

std::vector<int64_t> iterations_on_disk(const std::string& run) {
  std::vector<int64_t> its;
  for (const auto& e : fs::directory_iterator(fs::path(run) / "checkpoint")) {
    const std::string n = e.path().filename().string();
    if (n.rfind("rank0-it", 0) == 0 && n.size() > 4 && n.substr(n.size() - 4) == ".bin")
      its.push_back(std::atoll(n.c_str() + 8));
  }
  std::sort(its.begin(), its.end());
  return its;
}

void flip_byte(const std::string& path, uintmax_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c ^= 0x10;
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

}  // namespace

TEST_CASE("checkpoints carry a checksum; --keep-checkpoints keeps the newest N", "[checkpoint]") {
  const std::string dir = tmpdir("keep");
  for (int keep : {0, 1, 2}) {
    TrainConfig cfg = ck_config(20);
    cfg.keep_checkpoints = keep;
    const std::string run = dir + "/keep" + std::to_string(keep);
    Outcome o = run_ranks(cfg, run);
    for (const auto& e : o.errors) REQUIRE(e.empty());
    CHECK(latest_checkpoint(run) == 20);
    const std::vector<int64_t> want = keep == 0   ? std::vector<int64_t>{5, 10, 15, 20}
                                      : keep == 1 ? std::vector<int64_t>{20}
                                                  : std::vector<int64_t>{15, 20};
    CHECK(iterations_on_disk(run) == want);
    std::vector<int64_t> newest_first(want.rbegin(), want.rend());
    CHECK(checkpoint_iterations(run, 2) == newest_first);
    for (int64_t it : want)
      for (int r = 0; r < 2; ++r) {
        const CheckpointCheck c = verify_checkpoint_file(run, r, it);
        CHECK(c.ok);
        CHECK(c.checksummed);
      }
    CHECK(find_resume_point(run, 2).iteration == 20);
  }
  fs::remove_all(dir);
}

TEST_CASE("a flipped byte is named and resume falls back to the newest intact checkpoint",
          "[checkpoint]") {
  const std::string dir = tmpdir("flip");
  const auto whole = run_ranks(ck_config(20), dir + "/whole");
  REQUIRE(whole.errors[0].empty());
  const std::vector<double> expected = whole.results[0].train_loss;

  // A run killed after its checkpoint of iteration 15 (the schedule depends on --train-iters, so
  // it is the same run with its checkpoint of iteration 20 taken away).
  const std::string run = dir + "/run";
  TrainConfig first = ck_config(20);
  first.keep_checkpoints = 0;
  REQUIRE(run_ranks(first, run).errors[0].empty());
  for (int r = 0; r < 2; ++r) fs::remove(checkpoint_file(run, r, 20));
  std::ofstream(run + "/checkpoint/latest") << "15\n";
  REQUIRE(latest_checkpoint(run) == 15);
  const std::string bad = checkpoint_file(run, 1, 15);
  flip_byte(bad, fs::file_size(bad) / 2);
  const CheckpointCheck c = verify_checkpoint_file(run, 1, 15);
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.problem, Catch::Contains(bad) && Catch::Contains("corrupt"));
  CHECK(verify_checkpoint_file(run, 0, 15).ok);

  const ResumePoint rp = find_resume_point(run, 2);
  CHECK(rp.iteration == 10);
  REQUIRE(rp.problems.size() == 1);
  CHECK_THAT(rp.problems[0], Catch::Contains("iteration 15") && Catch::Contains("rank1-it15.bin"));

  // Resuming takes iteration 10 and reproduces the uninterrupted trajectory.
  TrainConfig resumed = ck_config(20);
  resumed.load = run;
  Outcome o = run_ranks(resumed, run);
  for (const auto& e : o.errors) REQUIRE(e.empty());
  CHECK(o.results[0].start_iteration == 10);
  REQUIRE(o.results[0].train_loss.size() == 10);
  for (size_t i = 0; i < 10; ++i) CHECK(o.results[0].train_loss[i] == expected[10 + i]);
  // the corrupt file was replaced by the resumed run's own checkpoint of iteration 15
  CHECK(verify_checkpoint_file(run, 1, 15).ok);
  fs::remove_all(dir);
}

TEST_CASE("a truncated or corrupt checkpoint with nothing to fall back on is refused, naming it",
          "[checkpoint]") {
  const std::string dir = tmpdir("trunc");
  TrainConfig cfg = ck_config(10);
  cfg.keep_checkpoints = 1;
  const std::string run = dir + "/run";
  REQUIRE(run_ranks(cfg, run).errors[0].empty());
  const std::string f0 = checkpoint_file(run, 0, 10);
  const uintmax_t size = fs::file_size(f0);
  fs::resize_file(f0, size - 100);
  CheckpointCheck c = verify_checkpoint_file(run, 0, 10);
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.problem, Catch::Contains(f0) && Catch::Contains("truncated"));
  ResumePoint rp = find_resume_point(run, 2);
  CHECK(rp.iteration == -1);
  REQUIRE(rp.problems.size() == 1);
  CHECK_THAT(rp.problems[0], Catch::Contains("rank0-it10.bin"));

  TrainConfig resumed = ck_config(20);
  resumed.load = run;
  Outcome o = run_ranks(resumed, run);
  for (const auto& e : o.errors) CHECK_THAT(e, Catch::Contains("no intact checkpoint"));
  CHECK_THAT(o.errors[0], Catch::Contains("rank0-it10.bin is truncated"));

  // a corrupt header is named too
  fs::resize_file(f0, size);
  flip_byte(f0, 20);  // numel
  c = verify_checkpoint_file(run, 0, 10);
  CHECK_FALSE(c.ok);
  CHECK_THAT(c.problem, Catch::Contains(f0));
  fs::remove_all(dir);
}

TEST_CASE("version-1 checkpoints (no checksum) are read with a warning", "[checkpoint]") {
  const std::string dir = tmpdir("v1");
  TrainConfig cfg = ck_config(10);
  cfg.keep_checkpoints = 1;
  const std::string run = dir + "/run";
  REQUIRE(run_ranks(cfg, run).errors[0].empty());
  for (int r = 0; r < 2; ++r) {  // what lossytp 0.1.0 wrote: magic LTPCKPT1, no trailer
    const std::string f = checkpoint_file(run, r, 10);
    fs::resize_file(f, fs::file_size(f) - 8);
    std::fstream s(f, std::ios::in | std::ios::out | std::ios::binary);
    s.seekp(7);
    s.put('1');
  }
  const CheckpointCheck c = verify_checkpoint_file(run, 1, 10);
  CHECK(c.ok);
  CHECK_FALSE(c.checksummed);
  const ResumePoint rp = find_resume_point(run, 2);
  CHECK(rp.iteration == 10);
  REQUIRE(rp.warnings.size() == 2);
  CHECK_THAT(rp.warnings[0], Catch::Contains("no checksum"));
  TrainConfig resumed = ck_config(12);
  resumed.load = run;
  Outcome o = run_ranks(resumed, run);
  for (const auto& e : o.errors) REQUIRE(e.empty());
  CHECK(o.results[0].start_iteration == 10);
  fs::remove_all(dir);
}

TEST_CASE("a disk that fills up while a checkpoint is written leaves the previous one intact",
          "[checkpoint][fault]") {
  const std::string dir = tmpdir("enospc");
  const auto whole = run_ranks(ck_config(20), dir + "/whole");
  REQUIRE(whole.errors[0].empty());
  const std::string run = dir + "/run";
  const uintmax_t file = fs::file_size(checkpoint_file(dir + "/whole", 1, 20));
  // Each rank's writes fail with ENOSPC halfway through its second checkpoint (iteration 10).
  ::setenv("LOSSYTP_DEBUG_ENOSPC_AFTER", std::to_string(file + file / 2).c_str(), 1);
  Outcome o = run_ranks(ck_config(20), run);
  ::unsetenv("LOSSYTP_DEBUG_ENOSPC_AFTER");
  bool named = false;
  for (const auto& e : o.errors) {
    CHECK_FALSE(e.empty());
    if (e.find("No space left on device") != std::string::npos) {
      named = true;
      CHECK_THAT(e, Catch::Contains("it10.bin") && Catch::Contains("previous one (iteration 5) is intact"));
    }
  }
  CHECK(named);
  CHECK(latest_checkpoint(run) == 5);
  for (const auto& e : fs::directory_iterator(fs::path(run) / "checkpoint"))
    CHECK(e.path().extension() != ".tmp");  // nothing half-written is left
  CHECK(find_resume_point(run, 2).iteration == 5);

  TrainConfig resumed = ck_config(20);
  resumed.load = run;
  Outcome r = run_ranks(resumed, run);
  for (const auto& e : r.errors) REQUIRE(e.empty());
  CHECK(r.results[0].start_iteration == 5);
  REQUIRE(r.results[0].train_loss.size() == 15);
  for (size_t i = 0; i < 15; ++i) CHECK(r.results[0].train_loss[i] == whole.results[0].train_loss[5 + i]);
  fs::remove_all(dir);
}
