// The Llama family from layer specs: sharding reproduces the single-rank run (virtual ranks:
// real sharding, real collectives in one process), CAAT-Net at p=1 is exact, vocabulary
// padding changes no loss, the presets have Hugging Face's parameter counts, and --dry-run's
// estimates follow the model.
#include <catch2/catch.hpp>

#include <cmath>

#include "common/run_virtual.h"
#include "common/small_config.h"
#include "experiments/dry_run.h"
#include "models/config.h"
#include "models/gpt.h"

using namespace lossytp;
using testing::run_virtual;
using testing::small_llama_config;
using testing::worst_relative;

namespace {
TrainConfig llama(int tp, int dp, int micro, int global) {
  TrainConfig c = small_llama_config(tp, dp, micro, global, 20);
  c.comm_timeout = 60;
  return c;
}
}  // namespace

TEST_CASE("Llama blocks on virtual ranks: TP=2, TP=4 and DP=2 match one rank", "[llama][virtual]") {
  const auto ref = run_virtual(llama(1, 1, 4, 8), "llama-ref").train_loss;
  INFO("loss " << ref.front() << " -> " << ref.back());
  CHECK(ref.back() < ref.front() - 0.3);
  CHECK(worst_relative(run_virtual(llama(2, 1, 4, 8), "llama-tp2").train_loss, ref) <= 1e-5);
  CHECK(worst_relative(run_virtual(llama(4, 1, 4, 8), "llama-tp4").train_loss, ref) <= 1e-5);
  CHECK(worst_relative(run_virtual(llama(1, 2, 4, 8), "llama-dp2").train_loss, ref) <= 1e-5);
}

TEST_CASE("Llama blocks: caat:p=1 reproduces the exact run at TP=2", "[llama][virtual]") {
  const auto exact = run_virtual(llama(2, 1, 4, 4), "llama-exact").train_loss;
  TrainConfig c = llama(2, 1, 4, 4);
  c.net = "caat:p=1";
  CHECK(worst_relative(run_virtual(c, "llama-caat1").train_loss, exact) <= 1e-5);
  c.net = "caat:p=0.5";  // and partial synchronisation really changes the numbers
  CHECK(worst_relative(run_virtual(c, "llama-caat05").train_loss, exact) > 1e-4);
}

TEST_CASE("a padded vocabulary gives the unpadded model's losses", "[llama][virtual]") {
  for (bool llama_blocks : {true, false}) {
    TrainConfig c = llama_blocks ? llama(2, 1, 4, 4) : testing::small_config(2, 1, 4, 4, 20);
    c.comm_timeout = 60;
    c.model.vocab_size = c.data.vocab_size = 250;  // 250 -> 256 rows at TP=2
    c.model.make_vocab_size_divisible_by = 1;  // 250 rows (125 per rank): no padding
    REQUIRE(c.model.padded_vocab_size(2) == 250);
    const auto unpadded = run_virtual(c, "unpadded").train_loss;
    c.model.make_vocab_size_divisible_by = 128;
    REQUIRE(c.model.padded_vocab_size(2) == 256);
    CHECK(worst_relative(run_virtual(c, "padded").train_loss, unpadded) <= 1e-6);
  }
}

TEST_CASE("presets count parameters as Hugging Face does", "[llama]") {
  CHECK(find_preset("tinyllama-1.1b").model.num_parameters() == 1100048384LL);
  CHECK(find_preset("gpt2-large").model.num_parameters() == 774030080LL);
  CHECK(find_preset("gpt2-124m").model.num_parameters() == 124439808LL);
  CHECK(find_preset("gpt2-medium").model.num_parameters() == 354823168LL);
  CHECK(find_preset("gpt2-xl").model.num_parameters() == 1557611200LL);
  // Megatron's SwiGLU default width and the padding table of ../shared/llama-and-hf.md
  ModelConfig m;
  m.swiglu = true;
  m.hidden_size = 768;
  CHECK(m.ffn() == 2048);
  m.hidden_size = 2048;
  CHECK(m.ffn() == 5440);
  m.vocab_size = 50257;
  CHECK(m.padded_vocab_size(1) == 50304);
  CHECK(m.padded_vocab_size(2) == 50432);
  CHECK(m.padded_vocab_size(4) == 50688);
  CHECK(m.padded_vocab_size(8) == 51200);
  m.vocab_size = 128256;
  CHECK(m.padded_vocab_size(4) == 128512);
  CHECK(m.padded_vocab_size(8) == 129024);
}

TEST_CASE("a model's parameters per rank add up to the whole model", "[llama]") {
  for (const char* name : {"llama-tiny", "gpt-tiny"}) {
    ModelConfig m = find_preset(name).model;
    m.make_vocab_size_divisible_by = 1;  // no padding: the ranks' shards tile the model exactly
    const GPTModel one(m, 0, 1, {}, {}, false);
    long long total = 0;
    for (const ParamSpec& s : const_cast<GPTModel&>(one).params().specs()) total += static_cast<long long>(s.numel());
    CHECK(total == m.num_parameters());
    long long sharded = 0;
    for (int r = 0; r < 4; ++r) {
      GPTModel part(m, r, 4, {}, {}, false);
      for (const ParamSpec& s : part.params().specs())
        sharded += s.shard_dim >= 0 || r == 0 ? static_cast<long long>(s.numel()) : 0;
    }
    CHECK(sharded == m.num_parameters());
  }
}

TEST_CASE("dry-run: parameters, memory and traffic of llama-tiny", "[llama]") {
  TrainConfig c;
  c.model_preset = "llama-tiny";
  c.model = find_preset("llama-tiny").model;
  c.micro_batch_size = 8;
  c.tp = 2;
  c.dp = 2;
  c.global_batch_size = 32;  // 2 micro-batches per iteration
  const auto j = plan_run(c);
  CHECK(j["parameters"].get<long long>() == c.model.num_parameters());
  const double N = 8.0 * 256, C = 256;
  // Megatron's per-block all-reduces: proj and fc2 forward, qkv and fc1 backward, N x C each,
  // 2 (p - 1) / p of them on the wire per rank at p = 2, two micro-batches, 4 bytes.
  const auto& comm = j["comm_bytes_per_iteration"];
  CHECK(comm["layer0.attn.proj.fwd"].get<double>() == Approx(N * C * 4 * 2));
  CHECK(comm["layer3.mlp.fc1.bwd"].get<double>() == Approx(N * C * 4 * 2));
  CHECK(comm["ce.max"].get<double>() == Approx(N * 4 * 2));
  CHECK(comm.contains("dp.grad"));
  const double P = static_cast<double>(j["parameters_per_rank"].get<long long>());
  CHECK(j["memory_per_rank"]["optimizer"].get<double>() >= 8 * P);
  CHECK(j["memory_bytes_per_rank"].get<double>() > 16 * P);
}

TEST_CASE("memory check: a run larger than the machine stops with both numbers", "[llama]") {
  CHECK(check_memory(1e9, 2, 4e9, Device::CPU).empty());
  const std::string e = check_memory(3e9, 2, 4e9, Device::CPU);
  CHECK(e.find("5.59 GiB") != std::string::npos);
  CHECK(e.find("3.73 GiB") != std::string::npos);
}
