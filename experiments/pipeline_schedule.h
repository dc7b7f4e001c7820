// Pipeline-parallel schedules (Megatron-LM's 1F1B and interleaved 1F1B) and the simulated timeline of one
// pipelined step. Pure functions: no model, no communication; the engine (experiments/pipeline.*) runs the
// ops in the order given here and feeds measured compute and simulated link times back to simulate_timeline.
#pragma once
#include <vector>

namespace lossytp::pipeline {

enum class OpKind { Forward, Backward };
struct Op {
  OpKind kind;
  int chunk;  // model chunk of this stage (0..V-1)
  int micro;  // micro-batch (0..M-1)
};

// P stages, V model chunks per stage (V = 1: 1F1B without interleaving; V > 1: Megatron's interleaved schedule),
// M micro-batches. Throws std::invalid_argument naming the flags when the schedule cannot use them.
void validate(int P, int V, int M);

// The ops of stage `stage` (0..P-1) in execution order, exactly Megatron-LM's order
// (schedules.py: forward_backward_pipelining_without_interleaving / _with_interleaving, micro-batch group size P).
// Every (chunk, micro) appears once as Forward and once as Backward; per chunk, micro-batches go 0..M-1.
std::vector<Op> train_schedule(int P, int V, int M, int stage);

// Evaluation: forward only, in the same forward order as train_schedule.
std::vector<Op> forward_schedule(int P, int V, int M, int stage);

// Virtual stage of a chunk (Megatron's interleaved layer layout): its layers are [vs * L/(P*V), (vs+1) * L/(P*V)).
// The previous virtual stage feeds its Forward; the next one its Backward.
inline int virtual_stage(int P, int chunk, int stage) { return chunk * P + stage; }

// Simulated duration of one pipelined step. ops[s] = train_schedule(P, V, M, s) (or forward_schedule);
// compute_s[s][i] = duration of ops[s][i] on stage s (measured compute plus simulated time of its collectives);
// link_s[s][i] = simulated link time of the message op i of stage s waits for (activation from virtual stage
// vs-1 for a Forward, gradient from vs+1 for a Backward; 0 where the input is local: the Forward of virtual
// stage 0, the Backward of the last virtual stage).
// An op starts when its stage is free and its input has arrived (producer's end + link time); stages start at 0.
struct Timeline {
  double span_s = 0;           // end of the last op of any stage
  double bubble_fraction = 0;  // 1 - sum_s busy_s / (P * span_s)
  std::vector<double> busy_s;  // per stage: sum of its ops' compute_s
};
// Throws std::invalid_argument on mismatched shapes, std::logic_error if the ops can never all run
// (a stage waits on an op that waits on it, or on an op that is in no stage's list).
Timeline simulate_timeline(int P, int V, const std::vector<std::vector<Op>>& ops,
                           const std::vector<std::vector<double>>& compute_s,
                           const std::vector<std::vector<double>>& link_s);

// Textbook bubble with equal forward/backward times and free links: 1F1B (P-1)/(M+P-1);
// interleaved (P-1)/(V*M + P-1) (the bubble shrinks V-fold because each op is 1/V of a stage's layers).
double ideal_bubble_fraction(int P, int V, int M);

}  // namespace lossytp::pipeline
