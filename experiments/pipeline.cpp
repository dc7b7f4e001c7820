#include "experiments/pipeline.h"

#include <chrono>
#include <climits>
#include <stdexcept>
#include <string>

namespace lossytp {

namespace {
using Clock = std::chrono::steady_clock;
double sim_seconds(const CommStats& s) { return s.total().sim_seconds; }
}  // namespace

PipelineRunner::PipelineRunner(GPTModel& model, Comm& pp, int micro_batches)
    : model_(model), pp_(pp), P_(model.pipeline().stages), V_(model.pipeline().chunks), M_(micro_batches),
      stage_(model.pipeline().stage) {
  pipeline::validate(P_, V_, M_);
  if (pp.size() != P_ || pp.rank() != stage_)
    throw std::logic_error("PipelineRunner: the pp group does not match the model's stage");
  if (2LL * V_ * M_ > 32767)  // MPI guarantees tags up to 32767: one per message of a step
    throw std::invalid_argument("pipeline parallelism: " + std::to_string(M_) + " micro-batches x " +
                                std::to_string(V_) + " model chunks is too many (at most 16383 per step)");
  train_ops_ = pipeline::train_schedule(P_, V_, M_, stage_);
  eval_ops_ = pipeline::forward_schedule(P_, V_, M_, stage_);
}

// One tag per message of a step, named by the op that receives it.
int PipelineRunner::tag(pipeline::OpKind kind, int chunk, int micro) const {
  return ((kind == pipeline::OpKind::Forward ? 0 : V_) + chunk) * M_ + micro;
}

double PipelineRunner::run(const std::vector<pipeline::Op>& ops, const Fill& fill, int B, int T, Comm& tp,
                           bool backward, float grad_scale) {
  using pipeline::OpKind;
  const PipelineStage& st = model_.pipeline();
  const int64_t R = model_.residual_rows(B * T, tp.size()), C = model_.config().hidden_size;
  const size_t RC = static_cast<size_t>(R * C);
  const Device dev = model_.params().device();
  for (Tensor* t : {&in_, &out_, &grad_in_, &grad_out_})
    if (t->numel() != RC) *t = Tensor({R, C}, dev);
  const int last_vs = P_ * V_ - 1;
  const int next = (stage_ + 1) % P_, prev = (stage_ + P_ - 1) % P_;
  // Activation slots of the micro-batches in flight (forward done, backward not yet).
  std::map<std::pair<int, int>, int> slot_of;
  std::vector<int> free_slots;
  int slots = 0;
  if (backward) {
    compute_s_.assign(ops.size(), 0.0);
    link_s_.assign(ops.size(), 0.0);
  }
  double loss = 0.0;
  for (size_t i = 0; i < ops.size(); ++i) {
    const pipeline::Op& op = ops[i];
    const int vs = pipeline::virtual_stage(P_, op.chunk, stage_);
    double link = 0.0, t_sim = 0.0;
    std::chrono::duration<double> dt{};
    if (op.kind == OpKind::Forward) {
      if (vs > 0) link = pp_.recv(in_.data(), RC, prev, tag(OpKind::Forward, op.chunk, op.micro), "pp.fwd");
      const bool ends = st.first_virtual(op.chunk) || st.last_virtual(op.chunk);
      if (ends) fill(op.micro, x_, y_);
      int slot = 0;
      if (backward) {
        if (free_slots.empty()) free_slots.push_back(slots++);
        slot = free_slots.back();
        free_slots.pop_back();
        slot_of[{op.chunk, op.micro}] = slot;
      }
      const double s0 = sim_seconds(tp.stats());
      const auto t0 = Clock::now();
      loss += model_.pipe_forward(op.chunk, slot, x_.data(), y_.data(), in_.data(), out_.data(), B, T, tp, backward,
                                  grad_scale);
      dt = Clock::now() - t0;
      t_sim = sim_seconds(tp.stats()) - s0;
      if (vs < last_vs)  // to the next virtual stage: chunk (vs + 1) / P of the next stage
        pp_.send(out_.data(), RC, next, tag(OpKind::Forward, (vs + 1) / P_, op.micro), "pp.fwd");
    } else {
      if (vs < last_vs)
        link = pp_.recv(grad_in_.data(), RC, next, tag(OpKind::Backward, op.chunk, op.micro), "pp.bwd");
      const auto it = slot_of.find({op.chunk, op.micro});
      if (it == slot_of.end()) throw std::logic_error("pipeline schedule: a backward before its forward");
      const double s0 = sim_seconds(tp.stats());
      const auto t0 = Clock::now();
      model_.pipe_backward(op.chunk, it->second, grad_in_.data(), grad_out_.data(), B, T, tp);
      dt = Clock::now() - t0;
      t_sim = sim_seconds(tp.stats()) - s0;
      free_slots.push_back(it->second);
      slot_of.erase(it);
      if (vs > 0) pp_.send(grad_out_.data(), RC, prev, tag(OpKind::Backward, (vs - 1) / P_, op.micro), "pp.bwd");
    }
    if (backward) {
      compute_s_[i] = dt.count() + t_sim;
      link_s_[i] = link;
    }
  }
  pp_.wait_sends();
  return loss;
}

double PipelineRunner::train_step(const Fill& fill, int B, int T, Comm& tp, float grad_scale) {
  return run(train_ops_, fill, B, T, tp, true, grad_scale);
}

double PipelineRunner::eval_step(const Fill& fill, int B, int T, Comm& tp) {
  return run(eval_ops_, fill, B, T, tp, false, 0.0f);
}

void PipelineRunner::reduce_embedding_grads() {
  if (!model_.tied_across_stages()) return;
  ParamStore& ps = model_.params();
  const int w = model_.embedding_weight();
  pp_.exchange_add(ps.grad(w), ps.spec(w).numel(), model_.pipeline().first() ? P_ - 1 : 0, 0, "pp.embed.grad");
  pp_.wait_sends();
}

pipeline::Timeline PipelineRunner::timeline() {
  // Every stage's op times, gathered by a sum of disjoint rows over the pp group.
  const size_t n = train_ops_.size();
  std::vector<double> all(2 * n * P_, 0.0);
  for (size_t i = 0; i < n && i < compute_s_.size(); ++i) {
    all[(2 * stage_) * n + i] = compute_s_[i];
    all[(2 * stage_ + 1) * n + i] = link_s_[i];
  }
  pp_.backend().all_reduce_f64(all.data(), all.size(), ReduceOp::Sum);
  std::vector<std::vector<pipeline::Op>> ops(P_);
  std::vector<std::vector<double>> compute(P_), link(P_);
  for (int s = 0; s < P_; ++s) {
    ops[s] = s == stage_ ? train_ops_ : pipeline::train_schedule(P_, V_, M_, s);
    compute[s].assign(all.begin() + (2 * s) * n, all.begin() + (2 * s + 1) * n);
    link[s].assign(all.begin() + (2 * s + 1) * n, all.begin() + (2 * s + 2) * n);
  }
  return pipeline::simulate_timeline(P_, V_, ops, compute, link);
}

}  // namespace lossytp
