// Megatron-LM's pipeline schedules (megatron/core/pipeline_parallel/schedules.py) and the simulated timeline.
#include "experiments/pipeline_schedule.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace lossytp::pipeline {

void validate(int P, int V, int M) {
  if (P < 1)
    throw std::invalid_argument("pipeline: --pipeline-model-parallel-size must be >= 1, got " + std::to_string(P));
  if (V < 1)
    throw std::invalid_argument(
        "pipeline: model chunks per stage (num layers / (--pipeline-model-parallel-size x "
        "--num-layers-per-virtual-pipeline-stage)) must be >= 1, got " + std::to_string(V));
  if (M < 1)
    throw std::invalid_argument(
        "pipeline: need at least one micro-batch per step (micro-batches = global batch / (micro-batch x DP)), got " +
        std::to_string(M));
  if (V > 1 && P == 1)
    throw std::invalid_argument(
        "pipeline: the interleaved schedule (--num-layers-per-virtual-pipeline-stage) needs "
        "--pipeline-model-parallel-size > 1");
  // Megatron groups micro-batches in groups of P per model chunk; a partial last group stalls the pipeline,
  // so Megatron refuses it. With group size P that means M must be a multiple of P.
  if (V > 1 && M % P != 0)
    throw std::invalid_argument(
        "pipeline: the interleaved schedule (--num-layers-per-virtual-pipeline-stage) needs the number of "
        "micro-batches (global batch / (micro-batch x DP) = " + std::to_string(M) +
        ") to be a multiple of --pipeline-model-parallel-size (" + std::to_string(P) + "), as Megatron-LM requires");
}

namespace {

void check_stage(int P, int stage) {
  if (stage < 0 || stage >= P)
    throw std::invalid_argument("pipeline: stage " + std::to_string(stage) + " out of range [0, " +
                                std::to_string(P) + ")");
}

// Megatron's schedule table (get_schedule_table, group size P): the k-th forward of a stage runs micro-batches in
// groups of P, each group through chunk 0, then chunk 1, ...: k -> (chunk (k % PV) / P, micro (k / PV) * P + k % P).
// With V = 1 this is simply micro k.
Op forward_op(int P, int V, int k) {
  const int group = k / (P * V), r = k % (P * V);
  return {OpKind::Forward, r / P, group * P + r % P};
}
// get_model_chunk_id(k, forward=False): backward walks the same table with chunks reversed, so gradients enter at
// the last chunk (last virtual stage) first. Micro-batches per chunk stay in order 0..M-1 (Megatron pops FIFO).
Op backward_op(int P, int V, int k) {
  const Op f = forward_op(P, V, k);
  return {OpKind::Backward, V - 1 - f.chunk, f.micro};
}

// Forwards run before the first backward (get_pp_rank_microbatches). Earlier stages run more of them so that the
// later stages are fed; interleaving adds a full round of (V-1) groups so the last chunk is reached.
int num_warmup(int P, int V, int M, int stage) {
  const int w = V == 1 ? P - stage - 1 : (P - stage - 1) * 2 + (V - 1) * P;
  return std::min(w, M * V);
}

}  // namespace

std::vector<Op> train_schedule(int P, int V, int M, int stage) {
  validate(P, V, M);
  check_stage(P, stage);
  const int total = M * V, warmup = num_warmup(P, V, M, stage), steady = total - warmup;
  std::vector<Op> ops;
  ops.reserve(2 * total);
  for (int k = 0; k < warmup; k++) ops.push_back(forward_op(P, V, k));
  for (int k = 0; k < steady; k++) {  // 1F1B: one forward, then one backward
    ops.push_back(forward_op(P, V, warmup + k));
    ops.push_back(backward_op(P, V, k));
  }
  for (int k = steady; k < total; k++) ops.push_back(backward_op(P, V, k));  // cooldown: drain the backwards
  return ops;
}

std::vector<Op> forward_schedule(int P, int V, int M, int stage) {
  validate(P, V, M);
  check_stage(P, stage);
  std::vector<Op> ops;
  ops.reserve(M * V);
  for (int k = 0; k < M * V; k++) ops.push_back(forward_op(P, V, k));
  return ops;
}

namespace {
std::string op_name(const Op& op, int stage) {
  return std::string(op.kind == OpKind::Forward ? "Forward" : "Backward") + "(chunk " + std::to_string(op.chunk) +
         ", micro " + std::to_string(op.micro) + ") on stage " + std::to_string(stage);
}
}  // namespace

Timeline simulate_timeline(int P, int V, const std::vector<std::vector<Op>>& ops,
                           const std::vector<std::vector<double>>& compute_s,
                           const std::vector<std::vector<double>>& link_s) {
  if (P < 1 || V < 1) throw std::invalid_argument("simulate_timeline: P and V must be >= 1");
  if (ops.size() != size_t(P) || compute_s.size() != size_t(P) || link_s.size() != size_t(P))
    throw std::invalid_argument("simulate_timeline: ops, compute_s and link_s need one list per stage (P = " +
                                std::to_string(P) + ")");
  int M = 0;
  size_t total = 0;
  for (int s = 0; s < P; s++) {
    if (compute_s[s].size() != ops[s].size() || link_s[s].size() != ops[s].size())
      throw std::invalid_argument("simulate_timeline: stage " + std::to_string(s) +
                                  ": compute_s and link_s need one time per op");
    for (const Op& op : ops[s]) {
      if (op.chunk < 0 || op.chunk >= V || op.micro < 0)
        throw std::invalid_argument("simulate_timeline: bad op " + op_name(op, s));
      M = std::max(M, op.micro + 1);
    }
    total += ops[s].size();
  }

  // end[kind][vs][micro]: when that op finished, or -1 while it has not run yet.
  const int VS = P * V;
  auto idx = [&](OpKind kind, int vs, int micro) { return (size_t(kind == OpKind::Backward) * VS + vs) * M + micro; };
  std::vector<double> end(size_t(2) * VS * M, -1.0);
  {
    std::vector<char> seen(end.size(), 0);  // an op listed twice would make its end time ambiguous
    for (int s = 0; s < P; s++)
      for (const Op& op : ops[s])
        if (seen[idx(op.kind, virtual_stage(P, op.chunk, s), op.micro)]++)
          throw std::invalid_argument("simulate_timeline: duplicate op " + op_name(op, s));
  }

  // Each op's start depends only on its stage's previous op and its input, so running the stages in any
  // order that respects those dependencies gives the same times: sweep the stages until nothing moves.
  std::vector<size_t> next(P, 0);
  std::vector<double> free_at(P, 0.0);
  Timeline t;
  t.busy_s.assign(P, 0.0);
  size_t done = 0;
  while (done < total) {
    bool progress = false;
    for (int s = 0; s < P; s++) {
      while (next[s] < ops[s].size()) {
        const size_t i = next[s];
        const Op& op = ops[s][i];
        const int vs = virtual_stage(P, op.chunk, s);
        double ready = 0;  // inputs local to the stage are there from the start
        if (op.kind == OpKind::Forward) {
          if (vs > 0) {
            const double e = end[idx(OpKind::Forward, vs - 1, op.micro)];
            if (e < 0) break;
            ready = e + link_s[s][i];
          }
        } else {
          const double own = end[idx(OpKind::Forward, vs, op.micro)];  // backward needs its own activations
          if (own < 0) break;
          ready = own;
          if (vs + 1 < VS) {
            const double e = end[idx(OpKind::Backward, vs + 1, op.micro)];
            if (e < 0) break;
            ready = std::max(ready, e + link_s[s][i]);
          }
        }
        const double start = std::max(free_at[s], ready);
        free_at[s] = start + compute_s[s][i];
        end[idx(op.kind, vs, op.micro)] = free_at[s];
        t.busy_s[s] += compute_s[s][i];
        t.span_s = std::max(t.span_s, free_at[s]);
        next[s]++;
        done++;
        progress = true;
      }
    }
    if (!progress) {
      std::string msg = "simulate_timeline: the schedule deadlocks; stuck at:";
      for (int s = 0; s < P; s++)
        if (next[s] < ops[s].size()) msg += " " + op_name(ops[s][next[s]], s) + ";";
      throw std::logic_error(msg);
    }
  }
  double busy = 0;
  for (double b : t.busy_s) busy += b;
  t.bubble_fraction = t.span_s > 0 ? 1.0 - busy / (P * t.span_s) : 0.0;
  return t;
}

double ideal_bubble_fraction(int P, int V, int M) {
  validate(P, V, M);
  return double(P - 1) / (double(V) * M + P - 1);
}

}  // namespace lossytp::pipeline
