// Semigroup attention, the v1 "ESR" module of oroikono/Megatron-LM-new-attention (acf74e19: the
// module of every logged run; ../shared/semigroup-attention.md section 4), at any TP size:
//   qkvg = x W_qkv^T  column-parallel, plain contiguous split. Rows are HEAD-MAJOR: head h owns
//                     rows h*4D .. h*4D+4D-1 = [q_h | k_h | v_h | g_h] (D rows each), so rank r of
//                     N holds heads [r H/N, (r+1) H/N) whole. The fork's qkvg.weight is block-major
//                     [Q | K | V | G]: its row b*C + h*D + d is our row h*4D + b*D + d.
//   g~   = whiten(g) over the head's D (population variance, eps 1e-5, no affine)
//   z_ij = lam q_i.k_j 0.8/sqrt(D) + (1 - lam) ln sum_t w_t (1 + |g~_i - g~_j|^2 / (4 tau_t))^(-beta/2)
//   P    = causal softmax(z),  y = out_scale ((1 - alpha) P v + alpha P^2 v),  alpha = 0.08
//   out  = y W_proj^T  row-parallel (reduce_from_tp_region at "<prefix>.proj.fwd")
// (the fork's power iteration for pi is dropped: its ESR term is exactly P^2 v.)
// Per head, sharded with the heads (dim 0): log_tau [H, 4] (-0.5; tau = exp(clamp(., -6, 3))),
// logit_w [H, 4] (0; w = softmax), beta [H] (1.5; clamp [0.5, 2.5]), out_scale [H] (1; clamp
// [0.1, 2]). Shared by all heads, replicated: "<prefix>.shared.lam" (0.5; lam = sigmoid), whose
// per-rank gradient sums over the rank's heads only and is all-reduced over TP at
// "<prefix>.shared.grad" in every backward (as semigroup's scalars). Both projections N(0, 0.02^2)
// with no bias and no depth scaling, as the fork. Weight decay by Megatron's rule on the shapes
// here: the 2-D log_tau and logit_w decay, the 1-D beta, out_scale and lam ([1] here; 0-D in the
// fork, where Megatron decayed it) do not. Fully differentiable: q, k, g, lam, tau, w and beta get
// their gradients (the fork's Triton path on GPU gave them none). On CUDA the few raw scalars
// (lam, log_tau, logit_w, beta, out_scale of this rank's heads) are read back to the host, the
// kernel's constants derived there as on the CPU, and the gradients added back from one device
// buffer (which also carries lam's all-reduce).
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/ops.h"
#include "models/layer_spec.h"

namespace lossytp {

namespace {

constexpr int kNt = 4;             // the wrapper's n_taus
constexpr float kAlpha = 0.08f;    // esr_alpha
constexpr float kInitStd = 0.02f;  // nn.init.normal_(std=0.02) on both projections

bool inside(float v, float lo, float hi) { return v >= lo && v <= hi; }  // torch.clamp's gradient

class SemigroupEsrAttention final : public BlockPart {
 public:
  explicit SemigroupEsrAttention(const PartContext& c)
      : dev_(c.store.device()),
        C_(c.cfg.hidden_size),
        HD_(c.cfg.head_dim()),
        H_(c.cfg.num_attention_heads),
        NH_(c.cfg.num_attention_heads / c.store.tp_size()),
        prefix_(c.prefix),
        store_(c.store),
        qkv_(c.store, c.prefix + ".qkv", C_, 4 * H_ * HD_, kInitStd, c.opt, false, 1),
        proj_(c.store, c.prefix + ".proj", H_ * HD_, C_, kInitStd, c.opt, false) {
    if (c.cfg.group_query_attention && c.cfg.num_query_groups != c.cfg.num_attention_heads)
      throw std::invalid_argument("--attention semigroup-esr has one K/V head per query head: no --group-query-attention");
    if (c.rotary)
      throw std::invalid_argument("--attention semigroup-esr applies no RoPE (the fork's Megatron wrapper passes none): "
                                  "use --position-embedding-type learned_absolute");
    lam_ = c.store.declare(c.prefix + ".shared.lam", {1}, -1, Init::Constant, 0.5f, false);
    log_tau_ = c.store.declare(c.prefix + ".log_tau", {H_, kNt}, 0, Init::Constant, -0.5f, true);
    logit_w_ = c.store.declare(c.prefix + ".logit_w", {H_, kNt}, 0, Init::Zeros, 0.0f, true);
    beta_ = c.store.declare(c.prefix + ".beta", {H_}, 0, Init::Constant, 1.5f, false);
    out_scale_ = c.store.declare(c.prefix + ".out_scale", {H_}, 0, Init::Ones, 0.0f, false);
  }

  void forward(float* out, const float* x, int B, int T, Comm& tp, Workspace& ws) override {
    const int N = B * T;
    ensure(N);
    derive();
    qkv_.forward(qkvg_.data(), x, N, tp, ws);
    ops::semigroup_esr_forward(dev_, y_.data(), u_.data(), w2_.data(), lse_.data(), rstd_.data(), qkvg_.data(),
                               tau_.data(), logw_.data(), hb_.data(), os_.data(), lam(), kAlpha, B, T, NH_, HD_,
                               kNt);
    proj_.forward(out, y_.data(), N, tp, ws);
  }

  void backward(float* dx, const float* dout, const float* x, int B, int T, Comm& tp,
                Workspace& ws) override {
    const int N = B * T;
    ensure(N);
    derive();
    float* dy = ws.get("attn.d_out", static_cast<size_t>(N) * NH_ * HD_);
    float* d_qkvg = ws.get("attn.d_qkv", static_cast<size_t>(N) * 4 * NH_ * HD_);
    proj_.backward(dy, dout, y_.data(), N, tp, ws);
    double g_lam = 0.0;
    std::vector<double> g_tau(NH_ * kNt, 0.0), g_logw(NH_ * kNt, 0.0), g_hb(NH_, 0.0), g_os(NH_, 0.0);
    ops::semigroup_esr_backward(dev_, d_qkvg, &g_lam, g_tau.data(), g_logw.data(), g_hb.data(), g_os.data(), dy,
                                qkvg_.data(), rstd_.data(), u_.data(), w2_.data(), lse_.data(), tau_.data(),
                                logw_.data(), hb_.data(), os_.data(), lam(), kAlpha, B, T, NH_, HD_, kNt);
    // Per-head parameters: this rank's heads are its whole shard, so no reduction. The host
    // gradients [log_tau | logit_w | beta | out_scale | lam], added to the store below (0 where a
    // clamp is active: nothing changes).
    const int nt = NH_ * kNt;
    std::vector<float> gh(2 * nt + 2 * NH_ + 1, 0.0f);
    const float *lt = lt_.data(), *be = be_.data(), *sc = sc_.data();
    float *d_lt = gh.data(), *d_lw = d_lt + nt, *d_be = d_lw + nt, *d_sc = d_be + NH_;
    for (int h = 0; h < NH_; ++h) {
      double wdw = 0.0;  // w = softmax(logit_w); the kernel's gradient is at ln(w + 1e-12)
      std::vector<double> dw(kNt);
      for (int t = 0; t < kNt; ++t) {
        const int k = h * kNt + t;
        if (inside(lt[k], -6.0f, 3.0f)) d_lt[k] += static_cast<float>(g_tau[k]);
        dw[t] = g_logw[k] / (w_[k] + 1e-12);
        wdw += w_[k] * dw[t];
      }
      for (int t = 0; t < kNt; ++t) d_lw[h * kNt + t] += static_cast<float>(w_[h * kNt + t] * (dw[t] - wdw));
      if (inside(be[h], 0.5f, 2.5f)) d_be[h] += static_cast<float>(0.5 * g_hb[h]);
      if (inside(sc[h], 0.1f, 2.0f)) d_sc[h] += static_cast<float>(g_os[h]);
    }
    // lam is shared by all heads: this rank's heads' share, summed over TP here.
    const double l = lam();
    gh[2 * nt + 2 * NH_] = static_cast<float>(g_lam * l * (1.0 - l));
    if (gbuf_.numel() != gh.size()) gbuf_ = Tensor({static_cast<int64_t>(gh.size())}, dev_);
    gbuf_.copy_from_host(gh.data());
    float* gd = gbuf_.data();
    tp.all_reduce(gd + 2 * nt + 2 * NH_, 1, prefix_ + ".shared.grad");  // the all-reduce works where the buffers live
    ops::add_inplace(dev_, store_.grad(log_tau_), gd, nt);
    ops::add_inplace(dev_, store_.grad(logit_w_), gd + nt, nt);
    ops::add_inplace(dev_, store_.grad(beta_), gd + 2 * nt, NH_);
    ops::add_inplace(dev_, store_.grad(out_scale_), gd + 2 * nt + NH_, NH_);
    ops::add_inplace(dev_, store_.grad(lam_), gd + 2 * nt + 2 * NH_, 1);
    qkv_.backward(dx, d_qkvg, x, N, tp, ws);
  }

  size_t saved_floats(int N) const override { return static_cast<size_t>(N) * (7 * NH_ * HD_ + 2 * NH_); }
  size_t scratch_floats(int N) const override { return static_cast<size_t>(N) * 5 * NH_ * HD_; }
  void set_saved_pool(Workspace* pool) override {
    pool_ = pool;
    qkvg_ = u_ = w2_ = y_ = lse_ = rstd_ = Tensor();
    N_ = 0;
  }
  void comm_elements(int N, SiteElements& e) const override {
    qkv_.comm_elements(N, e);
    proj_.comm_elements(N, e);
    e[prefix_ + ".shared.grad"] += 1;
  }

 private:
  float lam() const { return static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(lam_v_)))); }
  // n floats of parameter i to the host (on CUDA the store lives in device memory).
  void read_param(int i, std::vector<float>& dst, size_t n) {
    dst.resize(n);
    store_.values().flat(store_.spec(i).offset, n, {static_cast<int64_t>(n)}).copy_to_host(dst.data());
  }
  // The kernel's per-head constants from this rank's shard of the raw parameters.
  void derive() {
    read_param(log_tau_, lt_, NH_ * kNt);
    read_param(logit_w_, lw_, NH_ * kNt);
    read_param(beta_, be_, NH_);
    read_param(out_scale_, sc_, NH_);
    std::vector<float> l;
    read_param(lam_, l, 1);
    lam_v_ = l[0];
    const float *lt = lt_.data(), *lw = lw_.data(), *be = be_.data(), *sc = sc_.data();
    tau_.resize(NH_ * kNt);
    logw_.resize(NH_ * kNt);
    w_.resize(NH_ * kNt);
    hb_.resize(NH_);
    os_.resize(NH_);
    for (int h = 0; h < NH_; ++h) {
      double m = -INFINITY, z = 0.0;
      for (int t = 0; t < kNt; ++t) m = std::max(m, static_cast<double>(lw[h * kNt + t]));
      for (int t = 0; t < kNt; ++t) z += std::exp(lw[h * kNt + t] - m);
      for (int t = 0; t < kNt; ++t) {
        const int k = h * kNt + t;
        tau_[k] = static_cast<float>(std::max(std::exp(std::clamp(static_cast<double>(lt[k]), -6.0, 3.0)), 1e-6));
        w_[k] = std::exp(lw[k] - m) / z;
        logw_[k] = static_cast<float>(std::log(w_[k] + 1e-12));
      }
      hb_[h] = 0.5f * std::clamp(be[h], 0.5f, 2.5f);
      os_[h] = std::clamp(sc[h], 0.1f, 2.0f);
    }
  }
  void ensure(int N) {
    if (N == N_) return;
    N_ = N;
    qkvg_ = saved("attn.qkv", {N, 4 * NH_ * HD_});
    u_ = saved("attn.esr_u", {N, NH_ * HD_});
    w2_ = saved("attn.esr_w2", {N, NH_ * HD_});
    y_ = saved("attn.out", {N, NH_ * HD_});
    lse_ = saved("attn.lse", {static_cast<int64_t>(N) * NH_});
    rstd_ = saved("attn.esr_rstd", {static_cast<int64_t>(N) * NH_});
  }
  Tensor saved(const char* name, std::vector<int64_t> shape) {
    return pool_ ? pool_->tensor(name, std::move(shape)) : Tensor(std::move(shape), dev_);
  }

  Device dev_;
  int C_, HD_, H_, NH_;  // NH_: this rank's heads
  std::string prefix_;
  ParamStore& store_;
  ColumnParallelLinear qkv_;
  RowParallelLinear proj_;
  int lam_ = -1, log_tau_ = -1, logit_w_ = -1, beta_ = -1, out_scale_ = -1;
  std::vector<float> tau_, logw_, hb_, os_;
  std::vector<double> w_;
  std::vector<float> lt_, lw_, be_, sc_;  // host copies of the raw per-head parameters
  float lam_v_ = 0.0f;                    // and of lam's
  Tensor gbuf_;                           // the parameter gradients on the device
  int N_ = 0;
  Workspace* pool_ = nullptr;
  Tensor qkvg_, u_, w2_, y_, lse_, rstd_;  // saved for the backward (qkvg with g whitened)
};

}  // namespace

std::unique_ptr<BlockPart> make_semigroup_esr_attention(const PartContext& c) {
  return std::make_unique<SemigroupEsrAttention>(c);
}

}  // namespace lossytp
