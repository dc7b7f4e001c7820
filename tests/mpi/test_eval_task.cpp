// Downstream-task scoring against independent computations: every choice's log-likelihood equals
// the difference of the model's summed losses over context + choice and over the context alone
// (unpadded, one sequence at a time), truncation included; TP=2 and DP=2 give TP=1's numbers.
#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "experiments/eval_task.h"
#include "kernels/philox.h"
#include "mpi_helpers.h"
#include "models/gpt.h"
#include "sim/layout.h"

using namespace lossytp;
using namespace lossytp::testing;

namespace {

ModelConfig task_model() {
  ModelConfig m;
  m.vocab_size = 50;  // padded for TP: ids in [50, padded) must never be needed
  m.seq_length = 8;
  m.num_layers = 2;
  m.hidden_size = 32;
  m.num_attention_heads = 4;
  m.init_std = 0.3f;  // choices with clearly different likelihoods: no near ties
  return m;
}

uint32_t rnd(uint64_t i, uint64_t stream) { return philox4x32_10(i, 0, stream, 0, 5, 0).v[0]; }

// 13 examples: contexts of 1 to 14 tokens (longer ones truncated), 2 to 4 choices of 1 to 8
// tokens (8 = seq-length).
EvalTask random_task(const ModelConfig& m) {
  EvalTask t;
  uint64_t k = 0;
  for (int e = 0; e < 13; ++e) {
    TaskExample ex;
    const int nctx = 1 + rnd(k++, 1) % 14, nch = 2 + rnd(k++, 1) % 3;
    for (int i = 0; i < nctx; ++i) ex.context.push_back(rnd(k++, 2) % m.vocab_size);
    for (int c = 0; c < nch; ++c) {
      ex.choices.emplace_back();
      const int len = c == 0 && e == 5 ? m.seq_length : 1 + rnd(k++, 3) % m.seq_length;
      for (int i = 0; i < len; ++i) ex.choices.back().push_back(rnd(k++, 4) % m.vocab_size);
    }
    ex.label = rnd(k++, 5) % nch;
    t.examples.push_back(ex);
  }
  return t;
}

// The reference: sum of losses over context + choice minus over the context alone, each run as
// its own unpadded sequence (B = 1, T = its length - 1).
std::vector<std::vector<double>> reference_ll(const EvalTask& t, GPTModel& model, Comm& tp) {
  const int T = model.config().seq_length;
  auto loss_sum = [&](const std::vector<int32_t>& s) {
    if (s.size() < 2) return 0.0;
    const std::vector<int32_t> x(s.begin(), s.end() - 1), y(s.begin() + 1, s.end());
    return model.step(x.data(), y.data(), 1, static_cast<int>(x.size()), tp, false, 0.0f);
  };
  std::vector<std::vector<double>> ll;
  for (const TaskExample& ex : t.examples) {
    ll.emplace_back();
    for (const auto& choice : ex.choices) {
      const size_t keep = std::min(ex.context.size(), T + 1 - choice.size());
      std::vector<int32_t> ctx(ex.context.end() - keep, ex.context.end()), seq = ctx;
      seq.insert(seq.end(), choice.begin(), choice.end());
      ll.back().push_back(-(loss_sum(seq) - loss_sum(ctx)));
    }
  }
  return ll;
}

void check_close(const std::vector<std::vector<double>>& got, const std::vector<std::vector<double>>& want) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  for (size_t e = 0; e < want.size(); ++e) {
    REQUIRE(got[e].size() == want[e].size());
    for (size_t c = 0; c < want[e].size(); ++c)
      worst = std::max(worst, std::abs(got[e][c] - want[e][c]) / (1e-3 + std::abs(want[e][c])));
  }
  CHECK(worst < 2e-5);
}

// Accuracy from log-likelihoods, as evaluate_task defines it.
std::pair<double, double> accuracy(const EvalTask& t, const std::vector<std::vector<double>>& ll) {
  double a = 0, an = 0;
  for (size_t e = 0; e < t.examples.size(); ++e) {
    std::vector<double> norm;
    for (size_t c = 0; c < ll[e].size(); ++c) norm.push_back(ll[e][c] / t.examples[e].choices[c].size());
    a += argmax_choice(ll[e]) == t.examples[e].label;
    an += argmax_choice(norm) == t.examples[e].label;
  }
  return {a / t.examples.size(), an / t.examples.size()};
}

}  // namespace

TEST_CASE("choice log-likelihoods equal the model's loss differences, micro-batches padded", "[np1]") {
  const ModelConfig m = task_model();
  auto g = make_mpi_groups(MPI_COMM_SELF, Layout::make(1, 0, 1, 1));
  GPTModel model(m, 0, 1);
  model.init(11);
  const EvalTask t = random_task(m);
  const auto want = reference_ll(t, model, *g->tp);
  for (int mb : {1, 3, 5}) {  // 3 and 5: the last micro-batch has padded rows
    INFO("micro-batch size " << mb);
    check_close(choice_log_likelihoods(t, model, mb, *g->tp, 0, t.examples.size()), want);
  }
  // a sub-range holds the same numbers
  const auto part = choice_log_likelihoods(t, model, 3, *g->tp, 4, 9);
  check_close(part, std::vector<std::vector<double>>(want.begin() + 4, want.begin() + 9));
  const TaskScores s = evaluate_task(t, model, 3, *g->tp, g->dp->backend(), 0, 1);
  const auto [acc, acc_norm] = accuracy(t, want);
  CHECK(s.n == 13);
  CHECK(s.acc == acc);
  CHECK(s.acc_norm == acc_norm);
  // LLs are log-probabilities: negative, and a choice's norm differs from its raw value
  for (const auto& e : want)
    for (double x : e) CHECK(x < 0);
}

TEST_CASE("a task file read back scores as the examples built in memory", "[np1]") {
  const ModelConfig m = task_model();
  const EvalTask t = random_task(m);
  const std::string dir = shared_tmpdir("eval-task-file");
  const std::string path = dir + "/task.jsonl";
  {
    std::ofstream f(path);
    for (const TaskExample& ex : t.examples) {
      nlohmann::json j = {{"context", ex.context}, {"choices", ex.choices}, {"label", ex.label}};
      f << j.dump() << "\n";
    }
  }
  const EvalTask back = load_eval_task(path, m.vocab_size, m.seq_length);
  auto g = make_mpi_groups(MPI_COMM_SELF, Layout::make(1, 0, 1, 1));
  GPTModel model(m, 0, 1);
  model.init(11);
  check_close(choice_log_likelihoods(back, model, 4, *g->tp, 0, back.examples.size()),
              choice_log_likelihoods(t, model, 4, *g->tp, 0, t.examples.size()));
  std::filesystem::remove_all(dir);
}

TEST_CASE("TP=2 and DP=2 score the task as TP=1 does", "[np2]") {
  const ModelConfig m = task_model();
  const EvalTask t = random_task(m);
  auto self = make_mpi_groups(MPI_COMM_SELF, Layout::make(1, 0, 1, 1));
  GPTModel ref(m, 0, 1);
  ref.init(11);
  const auto want = choice_log_likelihoods(t, ref, 3, *self->tp, 0, t.examples.size());
  const auto [acc, acc_norm] = accuracy(t, want);
  REQUIRE(acc > 0);  // something to compare
  SECTION("TP=2") {
    const Layout l = Layout::make(2, world_rank(), 2, 1);
    auto g = make_mpi_groups(MPI_COMM_WORLD, l);
    GPTModel model(m, l.tp_rank, l.tp);
    model.init(11);
    check_close(choice_log_likelihoods(t, model, 3, *g->tp, 0, t.examples.size()), want);
    const TaskScores s = evaluate_task(t, model, 3, *g->tp, g->dp->backend(), l.dp_rank, l.dp);
    CHECK(s.acc == acc);
    CHECK(s.acc_norm == acc_norm);
  }
  SECTION("DP=2") {
    const Layout l = Layout::make(2, world_rank(), 1, 2);
    auto g = make_mpi_groups(MPI_COMM_WORLD, l);
    GPTModel model(m, l.tp_rank, l.tp);
    model.init(11);
    const TaskScores s = evaluate_task(t, model, 3, *g->tp, g->dp->backend(), l.dp_rank, l.dp);
    CHECK(s.n == 13);
    CHECK(s.acc == acc);
    CHECK(s.acc_norm == acc_norm);
  }
}
