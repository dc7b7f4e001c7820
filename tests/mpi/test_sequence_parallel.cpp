// --sequence-parallel (Megatron's sequence parallelism) moves the norms and the residual stream
// onto N/tp token rows per TP rank and trades the all-reduces for all-gathers and
// reduce-scatters; the numbers stay those of TP=1: loss trajectories over 20 iterations (GPT-2
// and Llama blocks, TP=2 and TP=4), every gradient of a step (against the same TP without
// sequence parallelism, whose gradients test_model.cpp checks by finite differences), and the
// lossy network models act on the new sites.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "experiments/metrics_file.h"
#include "experiments/trainer.h"
#include "kernels/philox.h"
#include "models/gpt.h"
#include "mpi_helpers.h"
#include "sim/layout.h"

using namespace lossytp;
using namespace lossytp::testing;

namespace {

void sp_equivalence(int tp, int dp, int micro, int global, bool llama) {
  const std::string dir = shared_tmpdir("sp-tp" + std::to_string(tp) + "dp" + std::to_string(dp) +
                                        (llama ? "-llama" : ""));
  auto config = llama ? small_llama_config : small_config;
  TrainConfig ref = config(1, 1, micro, global, 20);
  TokenCorpus corpus = load_corpus(ref.data);
  std::vector<double> expected(ref.train_iters, 0.0);
  if (world_rank() == 0) {
    ref.out = dir + "/ref";
    expected = train(ref, corpus, MPI_COMM_SELF).train_loss;
  }
  MPI_Bcast(expected.data(), static_cast<int>(expected.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  TrainConfig cfg = config(tp, dp, micro, global, 20);
  cfg.sequence_parallel = true;
  cfg.out = dir + "/sp";
  auto got = train(cfg, corpus, MPI_COMM_WORLD).train_loss;
  REQUIRE(got.size() == expected.size());
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::abs(got[i] - expected[i]) / std::abs(expected[i]));
  INFO("first loss " << expected.front() << ", last " << expected.back() << ", worst relative difference " << worst);
  CHECK(worst <= 1e-5);
  CHECK(expected.back() < expected.front() - 0.3);  // it is really training
}

ModelConfig grad_model(bool llama) {
  ModelConfig m;
  m.vocab_size = 60;  // padded: 128 x tp rows
  m.seq_length = 8;
  m.num_layers = 2;
  m.hidden_size = 32;
  m.num_attention_heads = 4;
  m.init_std = 0.1f;
  if (llama) {
    m.hidden_size = 64;
    m.num_attention_heads = 8;
    m.group_query_attention = true;
    m.num_query_groups = 4;
    m.ffn_hidden_size = 48;
    m.normalization = "RMSNorm";
    m.position_embedding_type = "rope";
    m.rotary_percent = 0.5;
    m.swiglu = true;
    m.add_bias_linear = false;
    m.untie_embeddings_and_output_weights = true;
  }
  return m;
}

// One step (two micro-batches accumulated) with and without sequence parallelism on the same TP
// ranks: the same shards, so every gradient element compares directly.
void sp_gradients(bool llama) {
  const int tp = world_size();
  const Layout l = Layout::make(tp, world_rank(), tp, 1);
  auto g = make_mpi_groups(MPI_COMM_WORLD, l);
  const ModelConfig cfg = grad_model(llama);
  TPOptions sp;
  sp.sequence_parallel = true;
  GPTModel plain(cfg, l.tp_rank, tp), seq(cfg, l.tp_rank, tp, sp);
  plain.init(3);
  seq.init(3);
  const int B = 2, T = cfg.seq_length, N = B * T;
  std::vector<int32_t> x(N), y(N);
  double lp = 0, ls = 0;
  plain.params().grads().zero();
  seq.params().grads().zero();
  for (int micro = 0; micro < 2; ++micro) {
    for (int i = 0; i < N; ++i) {
      x[i] = philox4x32_10(i, micro, 1, 0, 99, 0).v[0] % cfg.vocab_size;
      y[i] = philox4x32_10(i, micro, 2, 0, 99, 0).v[0] % cfg.vocab_size;
    }
    lp += plain.step(x.data(), y.data(), B, T, *g->tp, true, 1.0f / N);
    ls += seq.step(x.data(), y.data(), B, T, *g->tp, true, 1.0f / N);
  }
  plain.reduce_partial_grads(*g->tp);
  seq.reduce_partial_grads(*g->tp);
  CHECK(ls == Approx(lp).epsilon(1e-6));
  ParamStore& a = plain.params();
  ParamStore& b = seq.params();
  REQUIRE(a.numel() == b.numel());
  int bad = 0;
  for (const ParamSpec& s : a.specs()) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < s.numel(); ++i) {
      const double u = a.grads().data()[s.offset + i], v = b.grads().data()[s.offset + i];
      worst = std::max(worst, std::abs(u - v));
      scale = std::max(scale, std::abs(u));
    }
    if (worst > 1e-5 * scale + 1e-9) {
      ++bad;
      UNSCOPED_INFO(s.name << ": largest difference " << worst << " of gradients up to " << scale);
    }
  }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("sequence parallel, TP=2 matches TP=1 over 20 iterations", "[np2]") { sp_equivalence(2, 1, 4, 4, false); }
TEST_CASE("sequence parallel, TP=4 matches TP=1 over 20 iterations", "[np4]") { sp_equivalence(4, 1, 4, 4, false); }
TEST_CASE("sequence parallel, Llama blocks: TP=2 matches TP=1", "[np2]") { sp_equivalence(2, 1, 4, 4, true); }
TEST_CASE("sequence parallel, Llama blocks: TP=4 matches TP=1", "[np4]") { sp_equivalence(4, 1, 4, 4, true); }
TEST_CASE("sequence parallel, TP=2 x DP=2 with accumulation matches TP=1", "[np4]") { sp_equivalence(2, 2, 2, 8, false); }

TEST_CASE("sequence parallel: every gradient of a step equals TP without it (TP=2)", "[np2]") {
  sp_gradients(false);
  sp_gradients(true);
}
TEST_CASE("sequence parallel: every gradient of a step equals TP without it (TP=4)", "[np4]") {
  sp_gradients(false);
  sp_gradients(true);
}

TEST_CASE("sequence parallel under lossy ring and endpoint networks: its sites lose packets, training stays finite", "[np2]") {
  const std::string dir = shared_tmpdir("sp-lossy");
  // the sites sequence parallelism adds: all-gathers (forward, re-gather, output gradient) and
  // reduce-scatters (row-parallel output, column-parallel input gradient, embedding)
  const std::vector<std::string> sites = {"embed.fwd", "embed.bwd", "layer0.attn.qkv.fwd",
                                          "layer0.attn.qkv.regather.bwd", "layer0.attn.qkv.bwd",
                                          "layer1.mlp.fc2.fwd", "layer1.mlp.fc2.bwd", "head.fwd",
                                          "head.regather.bwd", "head.bwd"};
  for (const char* mode : {"ring", "endpoint"}) {
    for (bool llama : {false, true}) {
      TrainConfig cfg = (llama ? small_llama_config : small_config)(2, 1, 4, 4, 5);
      cfg.sequence_parallel = true;
      cfg.eval_interval = 0;
      cfg.eval_iters = 0;
      // small packets: many of them per message
      cfg.net = std::string("drop:rate=0.05,packet=64,mode=") + mode +
                ",scope=embed|*.qkv.*|layer1.mlp.fc2.*|head";
      cfg.out = dir + "/" + mode + (llama ? "-llama" : "");
      TokenCorpus corpus = load_corpus(cfg.data);
      TrainResult r = train(cfg, corpus, MPI_COMM_WORLD);
      INFO(cfg.net << (llama ? ", Llama" : ", GPT-2"));
      for (double loss : r.train_loss) CHECK(std::isfinite(loss));
      if (world_rank() != 0) continue;
      MetricsFile m = MetricsFile::load(cfg.out + "/metrics.h5");
      for (const std::string& s : sites) {
        INFO(s);
        const auto* lost = m.int_series("comm/" + s + "/packets_lost");
        REQUIRE(lost);
        int64_t n = 0;
        for (int64_t v : *lost) n += v;
        CHECK(n > 0);
      }
      // outside the scope nothing is lost
      const auto* fc1 = m.int_series("comm/layer0.mlp.fc1.fwd/packets_lost");
      REQUIRE(fc1);
      for (int64_t v : *fc1) CHECK(v == 0);
    }
  }
}
