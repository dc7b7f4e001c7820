// Semigroup attention (--attention semigroup and semigroup-esr) trained on the GPU: trajectories
// against the CPU's, and TP=2 over virtual ranks on one GPU against TP=1. The scalar parameters
// (t, kappa, xi; lam, tau, w, beta, out_scale) live in device memory there: the models read them
// back and add their gradients through device buffers. Built into lossytp_gpu_tests and into the
// fake-CUDA test (tests/CMakeLists.txt), where it checks the device-pointer discipline of that
// code without a GPU. `lossytp_gpu_tests "[semigroup]"`.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>

#include "common/run_virtual.h"
#include "common/small_config.h"

using namespace lossytp;
using testing::run_virtual;
using testing::worst_relative;

namespace {

TrainConfig semigroup_on(const char* attention, const char* device, int tp, int iters) {
  TrainConfig c = testing::small_config(tp, 1, 4, 8, iters);
  c.comm_timeout = 120;
  c.device = device;
  c.model.attention = attention;
  return c;
}

}  // namespace

TEST_CASE("GPU semigroup attention: trajectories match the CPU's, TP=2 matches TP=1", "[model][semigroup]") {
  for (const char* att : {"semigroup", "semigroup-esr"}) {
    INFO("--attention " << att);
    const std::string a = att;
    const auto cpu = run_virtual(semigroup_on(att, "cpu", 1, 6), a + "-cpu").train_loss;
    const auto gpu = run_virtual(semigroup_on(att, "cuda", 1, 6), a + "-cuda").train_loss;
    REQUIRE(gpu.size() == 6);
    for (double l : gpu) CHECK(std::isfinite(l));
    CHECK(worst_relative(gpu, cpu) <= 1e-4);
    const auto tp2 = run_virtual(semigroup_on(att, "cuda", 2, 6), a + "-cuda-tp2").train_loss;
    CHECK(worst_relative(tp2, gpu) <= 1e-5);
  }
}

TEST_CASE("GPU semigroup attention: a hybrid pattern at TP=2 matches the CPU", "[model][semigroup]") {
  TrainConfig c = semigroup_on("semigroup", "cuda", 2, 4);
  c.model.attention_pattern = {"semigroup-esr", "semigroup"};
  const auto gpu = run_virtual(c, "sg-hybrid-cuda").train_loss;
  c.device = "cpu";
  const auto cpu = run_virtual(c, "sg-hybrid-cpu").train_loss;
  CHECK(worst_relative(gpu, cpu) <= 1e-4);
}
