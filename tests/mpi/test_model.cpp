// The whole model against independent references: finite differences of the loss for every
// parameter tensor (TP=1 and TP=2; GPT-2 and Llama blocks), and overfitting one batch.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/philox.h"
#include "mpi_helpers.h"
#include "models/adamw.h"
#include "models/gpt.h"
#include "sim/layout.h"

using namespace lossytp;
using namespace lossytp::testing;

namespace {

ModelConfig tiny_model() {
  ModelConfig m;
  m.vocab_size = 64;
  m.seq_length = 8;
  m.num_layers = 2;
  m.hidden_size = 32;
  m.num_attention_heads = 4;
  m.init_std = 0.1f;  // larger weights: larger gradients, less finite-difference noise
  return m;
}

// Llama blocks: RMSNorm, RoPE on part of each head, GQA (8 heads, 4 groups), SwiGLU, untied,
// no biases, a padded vocabulary (60 -> 128 x tp).
ModelConfig llama_model() {
  ModelConfig m = tiny_model();
  m.vocab_size = 60;
  m.num_attention_heads = 8;
  m.hidden_size = 64;  // head dim 8, rotary dim 4
  m.group_query_attention = true;
  m.num_query_groups = 4;
  m.ffn_hidden_size = 48;
  m.normalization = "RMSNorm";
  m.position_embedding_type = "rope";
  m.rotary_percent = 0.5;
  m.swiglu = true;
  m.add_bias_linear = false;
  m.untie_embeddings_and_output_weights = true;
  return m;
}

std::vector<int32_t> random_tokens(int n, int vocab, uint64_t stream) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = philox4x32_10(i, 0, stream, 0, 99, 0).v[0] % vocab;
  return t;
}

void gradcheck(int tp, const ModelConfig& cfg, TPOptions opt = {}) {
  const Layout l = Layout::make(world_size(), world_rank(), tp, 1);
  auto g = make_mpi_groups(MPI_COMM_WORLD, l);
  GPTModel model(cfg, l.tp_rank, l.tp, opt);
  model.init(3);
  const int B = 2, T = cfg.seq_length, N = B * T;
  auto x = random_tokens(N, cfg.vocab_size, 1), y = random_tokens(N, cfg.vocab_size, 2);
  ParamStore& ps = model.params();
  ps.grads().zero();
  model.step(x.data(), y.data(), B, T, *g->tp, true, 1.0f / N);
  model.reduce_partial_grads(*g->tp);  // sequence parallel: norms' and row biases' partial sums
  const std::vector<float> grads(ps.grads().data(), ps.grads().data() + ps.numel());

  auto loss = [&] { return model.step(x.data(), y.data(), B, T, *g->tp, false, 0.0f) / N; };
  const double h = 1e-2;
  int checked = 0, bad = 0;
  for (size_t pi = 0; pi < ps.specs().size(); ++pi) {
    const ParamSpec& s = ps.spec(static_cast<int>(pi));
    const size_t n = s.numel();
    // the largest-gradient element of the shard and two fixed others
    size_t imax = 0;
    for (size_t i = 0; i < n; ++i)
      if (std::abs(grads[s.offset + i]) > std::abs(grads[s.offset + imax])) imax = i;
    for (size_t idx : {imax, n / 3, n - 1}) {
      // Sharded parameters are perturbed on one rank at a time (each rank owns a different
      // element); replicated ones on every rank at once (they are one logical parameter).
      for (int owner = 0; owner < (s.shard_dim >= 0 ? tp : 1); ++owner) {
        const bool mine = s.shard_dim < 0 || l.tp_rank == owner;
        float* v = ps.value(static_cast<int>(pi)) + idx;
        const float orig = *v;
        if (mine) *v = orig + static_cast<float>(h);
        const double lp = loss();
        if (mine) *v = orig - static_cast<float>(h);
        const double lm = loss();
        if (mine) *v = orig;
        if (!mine) continue;
        const double fd = (lp - lm) / (2 * h), an = grads[s.offset + idx];
        const bool ok = std::abs(fd - an) <= 2e-2 * std::max(std::abs(fd), std::abs(an)) + 2e-4;
        ++checked;
        if (!ok) {
          ++bad;
          UNSCOPED_INFO(s.name << "[" << idx << "] analytic " << an << " finite-difference " << fd);
        }
      }
    }
  }
  CHECK(checked >= 3 * static_cast<int>(ps.specs().size()) / 2);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("whole-model gradients match finite differences, TP=1", "[np1]") { gradcheck(1, tiny_model()); }
TEST_CASE("whole-model gradients match finite differences, TP=2", "[np2]") { gradcheck(2, tiny_model()); }
TEST_CASE("Llama-block gradients match finite differences, TP=1", "[np1]") { gradcheck(1, llama_model()); }
TEST_CASE("Llama-block gradients match finite differences, TP=2", "[np2]") { gradcheck(2, llama_model()); }
TEST_CASE("sequence-parallel gradients match finite differences, TP=2 (GPT-2 and Llama blocks)", "[np2]") {
  TPOptions sp;
  sp.sequence_parallel = true;
  gradcheck(2, tiny_model(), sp);
  gradcheck(2, llama_model(), sp);
}

TEST_CASE("the model overfits one batch", "[np1]") {
  const Layout l = Layout::make(1, 0, 1, 1);
  auto g = make_mpi_groups(MPI_COMM_SELF, l);
  ModelConfig cfg = tiny_model();
  cfg.init_std = 0.02f;
  cfg.seq_length = 16;
  GPTModel model(cfg, 0, 1);
  model.init(5);
  AdamW opt(model.params(), AdamWConfig{0.9f, 0.95f, 1e-8f, 0.0f});
  const int B = 4, T = 16, N = B * T;
  auto x = random_tokens(N, cfg.vocab_size, 3), y = random_tokens(N, cfg.vocab_size, 4);
  double first = 0, last = 0;
  for (int it = 0; it < 200; ++it) {
    model.params().grads().zero();
    double loss = model.step(x.data(), y.data(), B, T, *g->tp, true, 1.0f / N) / N;
    if (it == 0) first = loss;
    last = loss;
    opt.step(3e-3f);
  }
  INFO("loss " << first << " -> " << last);
  CHECK(first == Approx(std::log(64.0)).epsilon(0.05));
  CHECK(last < 0.05);
}
