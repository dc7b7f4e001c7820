// The model on the GPU against the model on the CPU: one step's loss and gradients, whole
// training trajectories (exact and under a Gilbert-Elliott network), TP=2 over virtual ranks on
// one GPU against TP=1, and --bf16 on the GPU against its CPU emulation.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "common/run_virtual.h"
#include "common/small_config.h"
#include "models/gpt.h"
#include "sim/comm.h"
#include "sim/local_backend.h"

using namespace lossytp;
using testing::run_virtual;
using testing::worst_relative;

namespace {

TrainConfig on(TrainConfig c, const char* device, bool bf16 = false) {
  c.comm_timeout = 120;
  c.device = device;
  c.bf16 = bf16;
  return c;
}

}  // namespace

TEST_CASE("GPU model: one step's loss and every gradient match the CPU", "[model]") {
  TrainConfig cfg = testing::small_config(1, 1, 4, 4, 1);
  const ModelConfig& mc = cfg.model;
  const int B = 4, T = mc.seq_length, N = B * T;
  std::vector<int32_t> x(N), y(N);
  for (int i = 0; i < N; ++i) {
    x[i] = (i * 37 + 11) % mc.vocab_size;
    y[i] = (i * 53 + 5) % mc.vocab_size;
  }
  auto one_step = [&](Device dev, double& loss) {
    LocalWorld world(1, dev);
    Comm tp(world.group("tp", {0}, 0), "tp", nullptr);
    tp.set_device(dev);
    GPTModel model(mc, 0, 1, {}, Compute{dev, false});
    model.init(cfg.seed);
    model.params().grads().zero();
    loss = model.step(x.data(), y.data(), B, T, tp, true, 1.0f / N);
    return model.params().grads().to(Device::CPU);
  };
  double loss_cpu = 0, loss_gpu = 0;
  Tensor g_cpu = one_step(Device::CPU, loss_cpu);
  Tensor g_gpu = one_step(Device::CUDA, loss_gpu);
  CHECK(std::abs(loss_gpu - loss_cpu) <= 1e-5 * std::abs(loss_cpu));
  double scale = 0, worst = 0;
  for (size_t i = 0; i < g_cpu.numel(); ++i) scale = std::max(scale, static_cast<double>(std::abs(g_cpu.data()[i])));
  for (size_t i = 0; i < g_cpu.numel(); ++i)
    worst = std::max(worst, static_cast<double>(std::abs(g_gpu.data()[i] - g_cpu.data()[i])));
  INFO("largest gradient " << scale << ", worst difference " << worst);
  CHECK(scale > 0);
  CHECK(worst <= 1e-4 * scale);
}

TEST_CASE("GPU training: trajectories match the CPU's to rounding", "[model]") {
  TrainConfig c = testing::small_config(1, 1, 4, 8, 20);
  const auto cpu = run_virtual(on(c, "cpu"), "cpu").train_loss;
  const auto gpu = run_virtual(on(c, "cuda"), "cuda").train_loss;
  CHECK(gpu.back() < gpu.front() - 0.3);
  CHECK(worst_relative(gpu, cpu) <= 1e-4);
}

TEST_CASE("GPU training: TP=2 and TP=2 x DP=2 over virtual ranks on one GPU match TP=1", "[model]") {
  const auto ref = run_virtual(on(testing::small_config(1, 1, 4, 8, 20), "cuda"), "ref").train_loss;
  CHECK(worst_relative(run_virtual(on(testing::small_config(2, 1, 4, 8, 20), "cuda"), "tp2").train_loss, ref) <= 1e-5);
  CHECK(worst_relative(run_virtual(on(testing::small_config(2, 2, 2, 8, 20), "cuda"), "tp2dp2").train_loss, ref) <= 1e-5);
}

TEST_CASE("GPU training: gpt-tiny under a Gilbert-Elliott ring gives the CPU's trajectory", "[model]") {
  // The same packets are lost on both devices (the masks are a function of the message).
  TrainConfig c = testing::small_config(2, 1, 4, 4, 10);
  c.model_preset = "gpt-tiny";
  c.model = find_preset("gpt-tiny").model;
  c.data.vocab_size = c.model.vocab_size;
  c.net = "ge:preset=one,mode=ring";
  const TrainResult cpu = run_virtual(on(c, "cpu"), "ge-cpu");
  const TrainResult gpu = run_virtual(on(c, "cuda"), "ge-cuda");
  CHECK(gpu.observed_loss_rate == cpu.observed_loss_rate);
  CHECK(cpu.observed_loss_rate > 0);
  CHECK(worst_relative(gpu.train_loss, cpu.train_loss) <= 1e-4);
}

TEST_CASE("GPU training: --bf16 follows its CPU emulation and stays near fp32", "[model][bf16]") {
  TrainConfig c = testing::small_config(2, 1, 4, 8, 20);
  const auto fp32 = run_virtual(on(c, "cuda"), "fp32").train_loss;
  const auto bf16_gpu = run_virtual(on(c, "cuda", true), "bf16-cuda").train_loss;
  const auto bf16_cpu = run_virtual(on(c, "cpu", true), "bf16-cpu").train_loss;
  // identical operand rounding on both devices; the fp32 accumulation order differs
  CHECK(worst_relative(bf16_gpu, bf16_cpu) <= 1e-2);
  CHECK(worst_relative(bf16_gpu, fp32) <= 3e-2);
  CHECK(bf16_gpu != fp32);
}

TEST_CASE("GPU Llama blocks: one step and a TP=2 trajectory match the CPU", "[model][llama]") {
  // RMSNorm, RoPE, GQA, SwiGLU, untied output, no biases, a padded vocabulary (250 -> 256).
  TrainConfig c = testing::small_llama_config(2, 1, 4, 4, 10);
  c.model.vocab_size = c.data.vocab_size = 250;
  const auto cpu = run_virtual(on(c, "cpu"), "llama-cpu").train_loss;
  const auto gpu = run_virtual(on(c, "cuda"), "llama-cuda").train_loss;
  CHECK(gpu.back() < gpu.front() - 0.2);
  CHECK(worst_relative(gpu, cpu) <= 1e-4);
  const auto gpu_tp1 = run_virtual(on(testing::small_llama_config(1, 1, 4, 4, 10), "cuda"), "llama-tp1").train_loss;
  CHECK(worst_relative(run_virtual(on(testing::small_llama_config(2, 1, 4, 4, 10), "cuda"), "llama-tp2").train_loss,
                       gpu_tp1) <= 1e-5);
  TrainConfig b = on(testing::small_llama_config(2, 1, 4, 4, 10), "cuda", true);  // bf16 path too
  const auto bf16 = run_virtual(b, "llama-bf16").train_loss;
  CHECK(worst_relative(bf16, gpu_tp1) <= 3e-2);
}

TEST_CASE("GPU --sequence-parallel: TP=2 over virtual ranks on one GPU matches TP=1 (GPT-2 and Llama blocks)",
          "[model][sp]") {
  for (bool llama : {false, true}) {
    auto config = llama ? testing::small_llama_config : testing::small_config;
    const auto ref = run_virtual(on(config(1, 1, 4, 4, 20), "cuda"), "sp-ref").train_loss;
    TrainConfig c = on(config(2, 1, 4, 4, 20), "cuda");
    c.sequence_parallel = true;
    INFO((llama ? "Llama" : "GPT-2"));
    CHECK(worst_relative(run_virtual(c, "sp-tp2").train_loss, ref) <= 1e-5);
  }
}
