// Pipeline parallelism: one step of a pipeline stage. Runs the stage's ops of Megatron's
// schedule (experiments/pipeline_schedule.h: 1F1B, interleaved with several model chunks) on the
// model's chunks (GPTModel::pipe_forward / pipe_backward), passing each activation forward (site
// "pp.fwd") and its gradient backward ("pp.bwd") point-to-point through the "pp" Comm, so every
// network model, fill and transport applies to them. Sends never wait for their receiver; a stage
// waits only for the message its next op needs, as on a real pipeline.
// It also times each op (its wall-clock compute plus the simulated link time of the collectives
// inside it) and records the simulated link time of each message an op waited for: the inputs
// of the simulated timeline (pipeline_schedule.h simulate_timeline), which adds the pipeline
// bubble and the inter-stage links' delays (retransmissions included) to the step's time.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "experiments/pipeline_schedule.h"
#include "models/gpt.h"
#include "sim/backend.h"
#include "sim/comm.h"
#include "sim/tensor.h"

namespace lossytp {

class PipelineRunner {
 public:
  // micro_batches: per step, per DP rank. Throws std::invalid_argument when the schedule cannot
  // use them (pipeline::validate).
  PipelineRunner(GPTModel& model, Comm& pp, int micro_batches);

  // Fills x and y (B x T each) with micro-batch `micro` of the step.
  using Fill = std::function<void(int micro, std::vector<int32_t>& x, std::vector<int32_t>& y)>;
  // Forward and backward of every micro-batch; gradients accumulate into the model's params as
  // GPTModel::step's. Returns the sum of the token losses on the last stage, 0 elsewhere.
  double train_step(const Fill& fill, int B, int T, Comm& tp, float grad_scale);
  // Forward only (evaluation): the sum of the token losses on the last stage, 0 elsewhere.
  double eval_step(const Fill& fill, int B, int T, Comm& tp);
  // After train_step, with a tied embedding: the first and the last stage sum their copies'
  // gradients ("pp.embed.grad"), as Megatron's embedding group. No-op elsewhere.
  void reduce_embedding_grads();

  // The simulated timeline of the last train_step over the stages of this pipeline (collective
  // over the pp group's backend: control traffic, not lossy and not counted).
  pipeline::Timeline timeline();

 private:
  double run(const std::vector<pipeline::Op>& ops, const Fill& fill, int B, int T, Comm& tp, bool backward,
             float grad_scale);
  int tag(pipeline::OpKind kind, int chunk, int micro) const;

  GPTModel& model_;
  Comm& pp_;
  int P_, V_, M_, stage_;
  std::vector<pipeline::Op> train_ops_, eval_ops_;
  std::vector<double> compute_s_, link_s_;  // per op of the last train_step
  std::vector<int32_t> x_, y_;
  Tensor in_, out_, grad_in_, grad_out_;  // [R, C] each: a received and a sent activation or gradient
};

}  // namespace lossytp
