// Runs a training configuration on tp x dp virtual ranks (threads, sim/local_backend.h) on the
// configuration's device, and compares trajectories. Shared by the unit and GPU tests.
#pragma once
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "experiments/dataset.h"
#include "experiments/trainer.h"
#include "sim/local_backend.h"

namespace lossytp::testing {

// Rank 0's result; every rank must finish without an error. The run folder is removed after.
inline TrainResult run_virtual(TrainConfig cfg, const std::string& name) {
  namespace fs = std::filesystem;
  const int n = cfg.tp * cfg.dp;
  cfg.out = (fs::temp_directory_path() / ("lossytp-virtual-" + name + "-" + std::to_string(::getpid()))).string();
  TokenCorpus corpus = load_corpus(cfg.data);
  LocalWorld world(n, cfg.compute().device);
  std::vector<TrainResult> results(n);
  std::vector<std::string> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        results[r] = train(cfg, corpus, world, r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) REQUIRE(e.empty());
  fs::remove_all(cfg.out);
  return results[0];
}

// Largest |a - b| / |b| over two trajectories of the same length.
inline double worst_relative(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  REQUIRE(!a.empty());
  double w = 0;
  for (size_t i = 0; i < a.size(); ++i) w = std::max(w, std::abs(a[i] - b[i]) / std::abs(b[i]));
  return w;
}

}  // namespace lossytp::testing
