// Semigroup attention, the "generator step" of oroikono/Megatron-LM-new-attention at HEAD
// (faac37a2, ../shared/semigroup-attention.md section 2), at any TP size:
//   qkv = x W_qkv^T   column-parallel, stride 3: the fork's block-major rows [Q | K | V], each
//                     block split over TP, so a rank holds [Q_r; K_r; V_r] = whole heads
//                     (its input gradient all-reduced at "<prefix>.qkv.bwd")
//   L_ij = q_i k_j / sqrt(D) - kappa |i - j| / xi,  P = causal softmax(L),  o = P v
//   y    = (1 - t) v + t o,  t = sigmoid(dt_logit)
//   out  = y W_proj^T  row-parallel (reduce_from_tp_region at "<prefix>.proj.fwd")
// Shared by all heads, replicated on every rank ("<prefix>.shared.*", 1 element each):
//   dt_logit    learned, init ln(0.999 / 0.001) (t = 0.999)
//   kappa_uncon learned, init -20 (kappa = softplus(-20) ~ 2e-9)
//   xi_uncon    frozen (never gets a gradient), init 32 (xi = softplus(32) = 32, floored at 1e-6)
// Each rank's gradient of dt_logit and kappa_uncon sums over its own heads only, so the two
// partial sums are all-reduced over TP at "<prefix>.shared.grad" in every backward (every mode:
// exact, CAAT, sequence parallel; GPTModel::partial_grad leaves ".shared." parameters to it).
// Fully differentiable (q, k get their gradients, unlike the fork's Triton path). No weight
// decay on the three scalars (Megatron's rule for 1-D parameters; the fork's 0-D scalars did
// get decay there). On CUDA the three scalars are read back to the host (one copy each a forward
// or backward) and the shared gradients go through a 2-float device buffer for the all-reduce.
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/ops.h"
#include "models/layer_spec.h"

namespace lossytp {

namespace {

// PyTorch's softplus (threshold 20) and its derivative.
double softplus(double z) { return z > 20 ? z : std::log1p(std::exp(z)); }
double softplus_grad(double z) { return z > 20 ? 1.0 : 1.0 / (1.0 + std::exp(-z)); }

class SemigroupAttention final : public BlockPart {
 public:
  explicit SemigroupAttention(const PartContext& c)
      : dev_(c.store.device()),
        C_(c.cfg.hidden_size),
        HD_(c.cfg.head_dim()),
        NH_(c.cfg.num_attention_heads / c.store.tp_size()),
        prefix_(c.prefix),
        store_(c.store),
        qkv_(c.store, c.prefix + ".qkv", C_, 3 * c.cfg.num_attention_heads * HD_, c.cfg.init_std, c.opt,
             c.cfg.add_bias_linear, 3),
        proj_(c.store, c.prefix + ".proj", c.cfg.num_attention_heads * HD_, C_,
              c.cfg.init_std / std::sqrt(2.0f * c.cfg.num_layers), c.opt, c.cfg.add_bias_linear) {
    if (c.cfg.group_query_attention && c.cfg.num_query_groups != c.cfg.num_attention_heads)
      throw std::invalid_argument("--attention semigroup has one K/V head per query head: no --group-query-attention");
    if (c.rotary)
      throw std::invalid_argument("--attention semigroup applies no RoPE (the fork's Megatron wrapper passes none): "
                                  "use --position-embedding-type learned_absolute");
    theta_ = c.store.declare(c.prefix + ".shared.dt_logit", {1}, -1, Init::Constant,
                             static_cast<float>(std::log(0.999 / 0.001)), false);
    kappa_ = c.store.declare(c.prefix + ".shared.kappa_uncon", {1}, -1, Init::Constant, -20.0f, false);
    xi_ = c.store.declare(c.prefix + ".shared.xi_uncon", {1}, -1, Init::Constant, 32.0f, false);
  }

  void forward(float* out, const float* x, int B, int T, Comm& tp, Workspace& ws) override {
    const int N = B * T;
    ensure(N);
    read_scalars();
    qkv_.forward(qkv_out_.data(), x, N, tp, ws);
    ops::semigroup_attention_forward(dev_, y_.data(), o_.data(), lse_.data(), qkv_out_.data(), B, T, NH_, HD_,
                                     t(), slope());
    proj_.forward(out, y_.data(), N, tp, ws);
  }

  void backward(float* dx, const float* dout, const float* x, int B, int T, Comm& tp,
                Workspace& ws) override {
    const int N = B * T;
    ensure(N);  // the saved tensors of the pool in use (pipeline: this micro-batch's)
    read_scalars();
    float* dy = ws.get("attn.d_out", static_cast<size_t>(N) * NH_ * HD_);
    float* d_qkv = ws.get("attn.d_qkv", static_cast<size_t>(N) * 3 * NH_ * HD_);
    proj_.backward(dy, dout, y_.data(), N, tp, ws);
    double dt = 0.0, dc = 0.0;
    ops::semigroup_attention_backward(dev_, d_qkv, &dt, &dc, dy, qkv_out_.data(), o_.data(), lse_.data(), B, T,
                                      NH_, HD_, t(), slope());
    // This rank's heads' share of the shared parameters' gradients; summed over TP here.
    const double tt = t(), ku = kappa_u_;
    const float g[2] = {static_cast<float>(dt * tt * (1.0 - tt)),
                        static_cast<float>(dc / xi() * softplus_grad(ku))};
    if (!gbuf_.defined()) gbuf_ = Tensor({2}, dev_);
    gbuf_.copy_from_host(g);  // the all-reduce works where the rank's buffers live
    tp.all_reduce(gbuf_.data(), 2, prefix_ + ".shared.grad");
    ops::add_inplace(dev_, store_.grad(theta_), gbuf_.data(), 1);
    ops::add_inplace(dev_, store_.grad(kappa_), gbuf_.data() + 1, 1);
    qkv_.backward(dx, d_qkv, x, N, tp, ws);
  }

  size_t saved_floats(int N) const override { return static_cast<size_t>(N) * (5 * NH_ * HD_ + NH_); }
  size_t scratch_floats(int N) const override { return static_cast<size_t>(N) * 4 * NH_ * HD_; }
  void set_saved_pool(Workspace* pool) override {
    pool_ = pool;
    qkv_out_ = o_ = y_ = lse_ = Tensor();
    N_ = 0;
  }
  void comm_elements(int N, SiteElements& e) const override {
    qkv_.comm_elements(N, e);
    proj_.comm_elements(N, e);
    e[prefix_ + ".shared.grad"] += 2;
  }

 private:
  // The three scalars as host values (on CUDA they live in device memory).
  float host_value(int i) const {
    float v = 0.0f;
    store_.values().flat(store_.spec(i).offset, 1, {1}).copy_to_host(&v);
    return v;
  }
  void read_scalars() {
    theta_v_ = host_value(theta_);
    kappa_u_ = host_value(kappa_);
    xi_u_ = host_value(xi_);
  }
  float t() const { return static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(theta_v_)))); }
  double xi() const { return std::max(softplus(xi_u_), 1e-6); }
  float slope() const { return static_cast<float>(softplus(kappa_u_) / xi()); }  // kappa / xi
  void ensure(int N) {
    if (N == N_) return;
    N_ = N;
    qkv_out_ = saved("attn.qkv", {N, 3 * NH_ * HD_});
    o_ = saved("attn.sg_o", {N, NH_ * HD_});
    y_ = saved("attn.out", {N, NH_ * HD_});
    lse_ = saved("attn.lse", {static_cast<int64_t>(N) * NH_});
  }
  Tensor saved(const char* name, std::vector<int64_t> shape) {
    return pool_ ? pool_->tensor(name, std::move(shape)) : Tensor(std::move(shape), dev_);
  }

  Device dev_;
  int C_, HD_, NH_;  // NH_: this rank's heads
  std::string prefix_;
  ParamStore& store_;
  ColumnParallelLinear qkv_;
  RowParallelLinear proj_;
  int theta_ = -1, kappa_ = -1, xi_ = -1;
  float theta_v_ = 0.0f, kappa_u_ = 0.0f, xi_u_ = 0.0f;  // their values, read by read_scalars()
  Tensor gbuf_;  // the shared gradients on the device, for the all-reduce
  int N_ = 0;
  Workspace* pool_ = nullptr;
  Tensor qkv_out_, o_, y_, lse_;  // saved for the backward
};

}  // namespace

std::unique_ptr<BlockPart> make_semigroup_attention(const PartContext& c) {
  return std::make_unique<SemigroupAttention>(c);
}

}  // namespace lossytp
