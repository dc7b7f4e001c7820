// GPT-2's MLP, as Megatron's MLP without a gated unit:
//   h = GELU(x W_fc1^T + b1)   fc1 column-parallel (input gradient all-reduced at "<prefix>.fc1.bwd")
//   out = h W_fc2^T + b2       fc2 row-parallel (reduce_from_tp_region at "<prefix>.fc2.fwd")
// GELU is the tanh approximation. Its output is recomputed in the backward, not kept.
#include <cmath>

#include "kernels/ops.h"
#include "models/layer_spec.h"

namespace lossytp {

namespace {

class GeluMlp final : public BlockPart {
 public:
  explicit GeluMlp(const PartContext& c)
      : dev_(c.store.device()),
        F_(c.cfg.ffn() / c.store.tp_size()),
        fc1_(c.store, c.prefix + ".fc1", c.cfg.hidden_size, c.cfg.ffn(), c.cfg.init_std, c.opt,
             c.cfg.add_bias_linear),
        fc2_(c.store, c.prefix + ".fc2", c.cfg.ffn(), c.cfg.hidden_size,
             c.cfg.init_std / std::sqrt(2.0f * c.cfg.num_layers), c.opt, c.cfg.add_bias_linear) {}

  void forward(float* out, const float* x, int B, int T, Comm& tp, Workspace& ws) override {
    const int N = B * T;
    bind(N);
    float* act = ws.get("mlp.act", static_cast<size_t>(N) * F_);
    fc1_.forward(fc1_out_.data(), x, N, tp, ws);
    ops::gelu_forward(dev_, act, fc1_out_.data(), static_cast<size_t>(N) * F_);
    fc2_.forward(out, act, N, tp, ws);
  }

  void backward(float* dx, const float* dout, const float* x, int B, int T, Comm& tp,
                Workspace& ws) override {
    const int N = B * T;
    bind(N);  // the saved tensors of the pool in use (pipeline: this micro-batch's)
    const size_t NF = static_cast<size_t>(N) * F_;
    float* act = ws.get("mlp.act", NF);
    float* d_fc = ws.get("mlp.d_fc1", NF);
    ops::gelu_forward(dev_, act, fc1_out_.data(), NF);
    fc2_.backward(d_fc, dout, act, N, tp, ws);
    ops::gelu_backward(dev_, d_fc, fc1_out_.data(), d_fc, NF);
    fc1_.backward(dx, d_fc, x, N, tp, ws);
  }

  size_t saved_floats(int N) const override { return static_cast<size_t>(N) * F_; }
  size_t scratch_floats(int N) const override { return 2 * static_cast<size_t>(N) * F_; }
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
    if (fc1_out_.numel() != static_cast<size_t>(N) * F_)
      fc1_out_ = pool_ ? pool_->tensor("mlp.fc1", {N, F_}) : Tensor({N, F_}, dev_);
  }
  Device dev_;
  int F_;  // this rank's MLP channels
  ColumnParallelLinear fc1_;
  RowParallelLinear fc2_;
  Workspace* pool_ = nullptr;  // full recompute: where fc1_out_ lives
  Tensor fc1_out_;  // saved for the backward
};

}  // namespace

std::unique_ptr<BlockPart> make_gelu_mlp(const PartContext& c) { return std::make_unique<GeluMlp>(c); }

}  // namespace lossytp
