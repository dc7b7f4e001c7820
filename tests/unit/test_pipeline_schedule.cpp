// Pipeline schedules (Megatron-LM's 1F1B and interleaved 1F1B) and the simulated timeline.
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "experiments/pipeline_schedule.h"

using namespace lossytp::pipeline;
using Catch::Matchers::Contains;

namespace {

bool usable(int P, int V, int M) { return M >= 1 && !(V > 1 && (P == 1 || M % P != 0)); }

// "F0.2" = Forward of chunk 0, micro-batch 2.
std::string str(const std::vector<Op>& ops) {
  std::string s;
  for (const Op& op : ops) {
    if (!s.empty()) s += ' ';
    s += (op.kind == OpKind::Forward ? 'F' : 'B') + std::to_string(op.chunk) + "." + std::to_string(op.micro);
  }
  return s;
}

std::vector<std::vector<Op>> all_stages(int P, int V, int M, bool train = true) {
  std::vector<std::vector<Op>> ops;
  for (int s = 0; s < P; s++) ops.push_back(train ? train_schedule(P, V, M, s) : forward_schedule(P, V, M, s));
  return ops;
}

// Message passing with eager sends (never block) and blocking receives, all stages together: a stage runs its
// next op only once the op's input message exists. Independent of simulate_timeline. True if all ops complete.
bool runs_to_completion(int P, int V, const std::vector<std::vector<Op>>& ops) {
  std::set<std::tuple<int, int, int>> sent;  // (kind, virtual stage, micro) of finished ops
  std::vector<size_t> next(P, 0);
  for (bool moved = true; moved;) {
    moved = false;
    for (int s = 0; s < P; s++)
      while (next[s] < ops[s].size()) {
        const Op& op = ops[s][next[s]];
        const int vs = op.chunk * P + s;
        const bool fwd = op.kind == OpKind::Forward;
        const bool local = fwd ? vs == 0 : vs == P * V - 1;
        if (!local && !sent.count({fwd ? 0 : 1, fwd ? vs - 1 : vs + 1, op.micro})) break;  // blocking receive
        sent.insert({fwd ? 0 : 1, vs, op.micro});                                          // eager send
        next[s]++;
        moved = true;
      }
  }
  for (int s = 0; s < P; s++)
    if (next[s] != ops[s].size()) return false;
  return true;
}

Timeline uniform_timeline(int P, int V, int M, double f, double b, double link) {
  const auto ops = all_stages(P, V, M);
  std::vector<std::vector<double>> compute(P), links(P);
  for (int s = 0; s < P; s++)
    for (const Op& op : ops[s]) {
      compute[s].push_back(op.kind == OpKind::Forward ? f : b);
      const int vs = virtual_stage(P, op.chunk, s);
      const bool local = op.kind == OpKind::Forward ? vs == 0 : vs == P * V - 1;
      links[s].push_back(local ? 0.0 : link);
    }
  return simulate_timeline(P, V, ops, compute, links);
}

const int kMicro[] = {1, 2, 3, 4, 5, 6, 8, 12, 16};

}  // namespace

TEST_CASE("pipeline: each stage runs every (chunk, micro) once forward and once backward, in order", "[pipeline]") {
  for (int P = 1; P <= 8; P++)
    for (int V = 1; V <= 3; V++)
      for (int M : kMicro) {
        if (!usable(P, V, M)) continue;
        for (int s = 0; s < P; s++) {
          INFO("P=" << P << " V=" << V << " M=" << M << " stage=" << s);
          const auto ops = train_schedule(P, V, M, s);
          REQUIRE(ops.size() == size_t(2 * V * M));
          std::vector<int> next_f(V, 0), next_b(V, 0);
          for (const Op& op : ops) {
            REQUIRE(op.chunk >= 0);
            REQUIRE(op.chunk < V);
            if (op.kind == OpKind::Forward) {
              REQUIRE(op.micro == next_f[op.chunk]++);  // forwards of a chunk go 0..M-1
            } else {
              REQUIRE(op.micro == next_b[op.chunk]++);  // backwards too
              REQUIRE(op.micro < next_f[op.chunk]);     // and only after that micro-batch's forward
            }
          }
          for (int c = 0; c < V; c++) {
            REQUIRE(next_f[c] == M);
            REQUIRE(next_b[c] == M);
          }
          // Evaluation runs the training forwards in the same order.
          std::vector<Op> fwd;
          for (const Op& op : ops)
            if (op.kind == OpKind::Forward) fwd.push_back(op);
          REQUIRE(str(forward_schedule(P, V, M, s)) == str(fwd));
        }
      }
}

TEST_CASE("pipeline: schedules cannot deadlock with eager sends and blocking receives", "[pipeline]") {
  for (int P = 1; P <= 8; P++)
    for (int V = 1; V <= 3; V++)
      for (int M : kMicro) {
        if (!usable(P, V, M)) continue;
        INFO("P=" << P << " V=" << V << " M=" << M);
        REQUIRE(runs_to_completion(P, V, all_stages(P, V, M)));
        REQUIRE(runs_to_completion(P, V, all_stages(P, V, M, false)));
      }
  // The checker itself catches a deadlock: stage 1 runs micro 1 first, stage 0 waits for B(0) before F(1).
  const std::vector<std::vector<Op>> bad = {
      {{OpKind::Forward, 0, 0}, {OpKind::Backward, 0, 0}, {OpKind::Forward, 0, 1}, {OpKind::Backward, 0, 1}},
      {{OpKind::Forward, 0, 1}, {OpKind::Backward, 0, 1}, {OpKind::Forward, 0, 0}, {OpKind::Backward, 0, 0}}};
  REQUIRE_FALSE(runs_to_completion(2, 1, bad));
}

TEST_CASE("pipeline: warmup forwards follow Megatron's formula", "[pipeline]") {
  for (int P = 1; P <= 8; P++)
    for (int V = 1; V <= 3; V++)
      for (int M : kMicro) {
        if (!usable(P, V, M)) continue;
        for (int s = 0; s < P; s++) {
          INFO("P=" << P << " V=" << V << " M=" << M << " stage=" << s);
          const int total = M * V;
          const int warmup = std::min(V == 1 ? P - s - 1 : (P - s - 1) * 2 + (V - 1) * P, total);
          const auto ops = train_schedule(P, V, M, s);
          int leading = 0;
          while (leading < int(ops.size()) && ops[leading].kind == OpKind::Forward) leading++;
          // The warmup forwards, then the steady state starts with one more forward before its first backward.
          REQUIRE(leading == std::min(warmup + 1, total));
        }
      }
}

TEST_CASE("pipeline: 1F1B hand cases", "[pipeline]") {
  REQUIRE(str(train_schedule(2, 1, 4, 0)) == "F0.0 F0.1 B0.0 F0.2 B0.1 F0.3 B0.2 B0.3");
  REQUIRE(str(train_schedule(2, 1, 4, 1)) == "F0.0 B0.0 F0.1 B0.1 F0.2 B0.2 F0.3 B0.3");
  // Fewer micro-batches than stages: the warmup is capped at M.
  REQUIRE(str(train_schedule(4, 1, 2, 0)) == "F0.0 F0.1 B0.0 B0.1");
  REQUIRE(str(train_schedule(4, 1, 2, 2)) == "F0.0 F0.1 B0.0 B0.1");
  REQUIRE(str(train_schedule(4, 1, 2, 3)) == "F0.0 B0.0 F0.1 B0.1");
  // No pipelining: forward and backward alternate (Megatron's forward_backward_no_pipelining).
  REQUIRE(str(train_schedule(1, 1, 3, 0)) == "F0.0 B0.0 F0.1 B0.1 F0.2 B0.2");
  REQUIRE(str(forward_schedule(2, 1, 3, 1)) == "F0.0 F0.1 F0.2");
}

TEST_CASE("pipeline: interleaved hand case derived from Megatron's schedules.py", "[pipeline]") {
  // P=2, V=2, M=4. Schedule table (group size P=2), virtual micro-batch k -> (chunk, micro):
  //   k:     0   1   2   3   4   5   6   7
  //   chunk: 0   0   1   1   0   0   1   1   (backward: V-1-chunk)
  //   micro: 0   1   0   1   2   3   2   3
  // Stage 0: warmup (2-0-1)*2 + (2-1)*2 = 4 forwards, then 4 x (forward k+4, backward k), then 4 backwards.
  REQUIRE(str(train_schedule(2, 2, 4, 0)) ==
          "F0.0 F0.1 F1.0 F1.1 "
          "F0.2 B1.0 F0.3 B1.1 F1.2 B0.0 F1.3 B0.1 "
          "B1.2 B1.3 B0.2 B0.3");
  // Stage 1: warmup 0*2 + 2 = 2 forwards, then 6 x (forward k+2, backward k), then 2 backwards.
  REQUIRE(str(train_schedule(2, 2, 4, 1)) ==
          "F0.0 F0.1 "
          "F1.0 B1.0 F1.1 B1.1 F0.2 B0.0 F0.3 B0.1 F1.2 B1.2 F1.3 B1.3 "
          "B0.2 B0.3");
  REQUIRE(str(forward_schedule(2, 2, 4, 0)) == "F0.0 F0.1 F1.0 F1.1 F0.2 F0.3 F1.2 F1.3");
  // Virtual stages: chunk c of stage s holds layers of virtual stage c*P + s.
  REQUIRE(virtual_stage(2, 0, 1) == 1);
  REQUIRE(virtual_stage(2, 1, 0) == 2);
  REQUIRE(virtual_stage(4, 2, 3) == 11);
}

TEST_CASE("pipeline: simulated bubble with uniform times and free links", "[pipeline]") {
  // 1F1B: exactly the textbook (P-1)/(M+P-1), also when a backward costs twice a forward.
  for (int P = 1; P <= 8; P++)
    for (int M : kMicro) {
      INFO("P=" << P << " M=" << M);
      for (double b : {1.0, 2.0}) {
        const Timeline t = uniform_timeline(P, 1, M, 1.0, b, 0.0);
        REQUIRE(t.span_s == Approx((M + P - 1) * (1.0 + b)));
        REQUIRE(t.bubble_fraction == Approx(ideal_bubble_fraction(P, 1, M)).margin(1e-12));
        REQUIRE(t.busy_s.size() == size_t(P));
        for (double busy : t.busy_s) REQUIRE(busy == Approx(M * (1.0 + b)));
      }
    }
  // Interleaved (M a multiple of P): exactly (P-1)/(V*M + P-1) as well, span = (V*M + P - 1) x (f + b),
  // with f, b the per-chunk op times, also when a backward costs twice a forward.
  for (int P = 2; P <= 8; P++)
    for (int V = 2; V <= 3; V++)
      for (int M : kMicro) {
        if (!usable(P, V, M)) continue;
        INFO("P=" << P << " V=" << V << " M=" << M);
        for (double b : {1.0, 2.0}) {
          const Timeline t = uniform_timeline(P, V, M, 1.0, b, 0.0);
          REQUIRE(t.span_s == Approx((V * M + P - 1) * (1.0 + b)));
          REQUIRE(t.bubble_fraction == Approx(ideal_bubble_fraction(P, V, M)).margin(1e-12));
        }
      }
  REQUIRE(ideal_bubble_fraction(2, 1, 8) == Approx(1.0 / 9));
  REQUIRE(ideal_bubble_fraction(4, 2, 8) == Approx(3.0 / 19));
  REQUIRE(ideal_bubble_fraction(1, 1, 4) == 0.0);
}

TEST_CASE("pipeline: link times delay the span (2-stage hand case)", "[pipeline]") {
  // P=2, M=2, forward = backward = 1, every inter-stage message takes L:
  //   stage 0: F0 [0,1]  F1 [1,2]                          B0 [3+2L,4+2L]  B1 [5+2L,6+2L]
  //   stage 1:   F0 [1+L,2+L]  B0 [2+L,3+L]  F1 [3+L,4+L]  B1 [4+L,5+L]
  for (double L : {0.0, 0.25, 3.0}) {
    INFO("L=" << L);
    const Timeline t = uniform_timeline(2, 1, 2, 1.0, 1.0, L);
    REQUIRE(t.span_s == Approx(6.0 + 2 * L));
    REQUIRE(t.busy_s[0] == Approx(4.0));
    REQUIRE(t.busy_s[1] == Approx(4.0));
    REQUIRE(t.bubble_fraction == Approx(1.0 - 8.0 / (2 * (6.0 + 2 * L))));
  }
  // One slow message: only stage 1's F1 input is late (by 5); stage 1 idles, then everything after shifts.
  const auto ops = all_stages(2, 1, 2);
  std::vector<std::vector<double>> compute = {{1, 1, 1, 1}, {1, 1, 1, 1}};
  std::vector<std::vector<double>> links = {{0, 0, 0, 0}, {0, 0, 5, 0}};  // stage 1: F0 B0 F1 B1
  REQUIRE(str(ops[1]) == "F0.0 B0.0 F0.1 B0.1");
  // stage 1: F0 [1,2] B0 [2,3] F1 [7,8] B1 [8,9]; stage 0: B0 [3,4] B1 [9,10].
  REQUIRE(simulate_timeline(2, 1, ops, compute, links).span_s == Approx(10.0));
}

TEST_CASE("pipeline: simulate_timeline rejects deadlocks and bad shapes", "[pipeline]") {
  const std::vector<std::vector<Op>> bad = {
      {{OpKind::Forward, 0, 0}, {OpKind::Backward, 0, 0}, {OpKind::Forward, 0, 1}, {OpKind::Backward, 0, 1}},
      {{OpKind::Forward, 0, 1}, {OpKind::Backward, 0, 1}, {OpKind::Forward, 0, 0}, {OpKind::Backward, 0, 0}}};
  const std::vector<std::vector<double>> ones = {{1, 1, 1, 1}, {1, 1, 1, 1}};
  REQUIRE_THROWS_AS(simulate_timeline(2, 1, bad, ones, ones), std::logic_error);
  REQUIRE_THROWS_WITH(simulate_timeline(2, 1, bad, ones, ones), Contains("deadlock"));
  // A backward before its own forward on the last stage never runs either.
  const std::vector<std::vector<Op>> own = {{{OpKind::Forward, 0, 0}, {OpKind::Backward, 0, 0}},
                                            {{OpKind::Backward, 0, 0}, {OpKind::Forward, 0, 0}}};
  const std::vector<std::vector<double>> twos = {{1, 1}, {1, 1}};
  REQUIRE_THROWS_AS(simulate_timeline(2, 1, own, twos, twos), std::logic_error);
  // Shapes.
  const auto ops = all_stages(2, 1, 2);
  REQUIRE_THROWS_AS(simulate_timeline(3, 1, ops, ones, ones), std::invalid_argument);
  REQUIRE_THROWS_AS(simulate_timeline(2, 1, ops, twos, ones), std::invalid_argument);
  REQUIRE_THROWS_AS(simulate_timeline(2, 1, ops, ones, {{1, 1, 1, 1}, {1, 1, 1}}), std::invalid_argument);
  REQUIRE_THROWS_AS(simulate_timeline(2, 1, {{{OpKind::Forward, 1, 0}}, {}}, {{1}, {}}, {{0}, {}}),
                    std::invalid_argument);  // chunk out of range for V = 1
  // Forward-only timeline: M forwards through P stages, no backward messages.
  const auto fwd = all_stages(3, 1, 4, false);
  std::vector<std::vector<double>> c(3, std::vector<double>(4, 1.0)), l(3, std::vector<double>(4, 0.0));
  REQUIRE(simulate_timeline(3, 1, fwd, c, l).span_s == Approx(4 + 2));
}

TEST_CASE("pipeline: validate names the flags", "[pipeline]") {
  REQUIRE_NOTHROW(validate(1, 1, 1));
  REQUIRE_NOTHROW(validate(4, 1, 3));  // 1F1B takes any M, even M < P
  REQUIRE_NOTHROW(validate(4, 2, 8));
  REQUIRE_THROWS_WITH(validate(0, 1, 4), Contains("--pipeline-model-parallel-size"));
  REQUIRE_THROWS_WITH(validate(2, 0, 4), Contains("--num-layers-per-virtual-pipeline-stage"));
  REQUIRE_THROWS_WITH(validate(2, 1, 0), Contains("global batch / (micro-batch x DP)"));
  REQUIRE_THROWS_WITH(validate(1, 2, 4), Contains("--pipeline-model-parallel-size > 1"));
  REQUIRE_THROWS_WITH(validate(4, 2, 6), Contains("multiple of --pipeline-model-parallel-size"));
  REQUIRE_THROWS_WITH(validate(4, 2, 2), Contains("--num-layers-per-virtual-pipeline-stage"));
  REQUIRE_THROWS_AS(validate(4, 2, 6), std::invalid_argument);
  REQUIRE_THROWS_AS(train_schedule(2, 1, 4, 2), std::invalid_argument);  // stage out of range
  REQUIRE_THROWS_AS(forward_schedule(2, 2, 3, 0), std::invalid_argument);
}
