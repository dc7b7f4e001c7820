// Llama's MLP, as Megatron's MLP with --swiglu (gated_linear_unit, silu):
//   [g | u] = x W_fc1^T      fc1 column-parallel, 2F outputs stored as [gate; up] with partition
//                            stride 2, so rank r holds [gate_r; up_r] and its output rows are
//                            [g_r | u_r] (input gradient all-reduced at "<prefix>.fc1.bwd")
//   h = silu(g) * u
//   out = h W_fc2^T          fc2 row-parallel (reduce_from_tp_region at "<prefix>.fc2.fwd")
// Hugging Face: gate_proj = the gate rows, up_proj = the up rows, down_proj = fc2. h is
// recomputed in the backward, not kept.
#include <cmath>

#include "kernels/ops.h"
#include "models/layer_spec.h"

namespace lossytp {

namespace {

class SwigluMlp final : public BlockPart {
 public:
  explicit SwigluMlp(const PartContext& c)
      : dev_(c.store.device()),
        F_(c.cfg.ffn() / c.store.tp_size()),
        fc1_(c.store, c.prefix + ".fc1", c.cfg.hidden_size, 2 * c.cfg.ffn(), c.cfg.init_std, c.opt,
             c.cfg.add_bias_linear, 2),
        fc2_(c.store, c.prefix + ".fc2", c.cfg.ffn(), c.cfg.hidden_size,
             c.cfg.init_std / std::sqrt(2.0f * c.cfg.num_layers), c.opt, c.cfg.add_bias_linear) {}

  void forward(float* out, const float* x, int B, int T, Comm& tp, Workspace& ws) override {
    const int N = B * T;
    bind(N);
    float* act = ws.get("mlp.act", static_cast<size_t>(N) * F_);
    fc1_.forward(fc1_out_.data(), x, N, tp, ws);
    ops::swiglu_forward(dev_, act, fc1_out_.data(), N, F_);
    fc2_.forward(out, act, N, tp, ws);
  }

  void backward(float* dx, const float* dout, const float* x, int B, int T, Comm& tp,
                Workspace& ws) override {
    const int N = B * T;
    bind(N);  // the saved tensors of the pool in use (pipeline: this micro-batch's)
    float* act = ws.get("mlp.act", static_cast<size_t>(N) * F_);
    float* d_act = ws.get("mlp.d_act", static_cast<size_t>(N) * F_);
    float* d_fc1 = ws.get("mlp.d_fc1", static_cast<size_t>(N) * 2 * F_);
    ops::swiglu_forward(dev_, act, fc1_out_.data(), N, F_);
    fc2_.backward(d_act, dout, act, N, tp, ws);
    ops::swiglu_backward(dev_, d_fc1, fc1_out_.data(), d_act, N, F_);
    fc1_.backward(dx, d_fc1, x, N, tp, ws);
  }

  size_t saved_floats(int N) const override { return 2 * static_cast<size_t>(N) * F_; }
  size_t scratch_floats(int N) const override { return 4 * static_cast<size_t>(N) * F_; }
  void comm_elements(int N, SiteElements& e) const override {
    fc1_.comm_elements(N, e);
    fc2_.comm_elements(N, e);
  }
  void set_saved_pool(Workspace* pool) override {
    pool_ = pool;
    fc1_out_ = Tensor();
  }

 private:
  void bind(int N) {
    if (fc1_out_.numel() != static_cast<size_t>(N) * 2 * F_)
      fc1_out_ = pool_ ? pool_->tensor("mlp.fc1", {N, 2 * F_}) : Tensor({N, 2 * F_}, dev_);
  }
  Device dev_;
  int F_;  // this rank's MLP channels (each of gate and up)
  ColumnParallelLinear fc1_;
  RowParallelLinear fc2_;
  Workspace* pool_ = nullptr;  // full recompute: where fc1_out_ lives
  Tensor fc1_out_;  // [N, 2F_] = [g | u], saved for the backward
};

}  // namespace

std::unique_ptr<BlockPart> make_swiglu_mlp(const PartContext& c) {
  return std::make_unique<SwigluMlp>(c);
}

}  // namespace lossytp
