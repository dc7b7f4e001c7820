// Causal softmax self-attention, multi-head or grouped-query, as Megatron's SelfAttention:
//   qkv = x W_qkv^T   column-parallel (copy_to_tp_region; its input gradient all-reduced at
//                     "<prefix>.qkv.bwd")
//   q, k <- RoPE(q, k) when --position-embedding-type rope (the local heads, no communication)
//   o   = softmax(q k^T / sqrt(d), causal) v, each query head on its group's K/V
//   out = o W_proj^T   row-parallel (reduce_from_tp_region at "<prefix>.proj.fwd")
// W_qkv's rows are grouped by query group ([q heads of group g; k_g; v_g] for every g), so a
// contiguous split over TP gives each rank whole groups (num-query-groups % tp == 0); with one
// group per head this is the per-head [q; k; v] layout of GPT-2 blocks.
// Selective recompute (--recompute-granularity selective): o is not kept but recomputed in the
// backward from the saved q, k, v (the same kernel: the same bits).
#include <cmath>

#include "kernels/ops.h"
#include "models/layer_spec.h"

namespace lossytp {

namespace {

class SoftmaxAttention final : public BlockPart {
 public:
  explicit SoftmaxAttention(const PartContext& c)
      : dev_(c.store.device()),
        bf16_(c.store.compute().bf16),
        C_(c.cfg.hidden_size),
        HD_(c.cfg.head_dim()),
        NH_(c.cfg.num_attention_heads / c.store.tp_size()),
        NKV_(c.cfg.query_groups() / c.store.tp_size()),
        prefix_(c.prefix),
        rotary_(c.rotary),
        qkv_(c.store, c.prefix + ".qkv", C_,
             (c.cfg.num_attention_heads + 2 * c.cfg.query_groups()) * HD_, c.cfg.init_std, c.opt,
             c.cfg.add_bias_linear),
        // Megatron's output-layer init: std / sqrt(2 L) for the projections into the residual.
        proj_(c.store, c.prefix + ".proj", c.cfg.num_attention_heads * HD_, C_,
              c.cfg.init_std / std::sqrt(2.0f * c.cfg.num_layers), c.opt, c.cfg.add_bias_linear) {}

  void forward(float* out, const float* x, int B, int T, Comm& tp, Workspace& ws) override {
    const int N = B * T;
    ensure(N);
    qkv_.forward(qkv_out_.data(), x, N, tp, ws);
    if (rotary_) rotary_->forward(qkv_out_.data(), B, T, NH_, NKV_);
    float* att = att_out(N, ws);
    core(att, B, T);
    proj_.forward(out, att, N, tp, ws);
  }

  void backward(float* dx, const float* dout, const float* x, int B, int T, Comm& tp,
                Workspace& ws) override {
    const int N = B * T;
    float* d_att = ws.get("attn.d_out", static_cast<size_t>(N) * NH_ * HD_);
    float* d_qkv = ws.get("attn.d_qkv", static_cast<size_t>(N) * qkv_width());
    float* att = att_out(N, ws);
    if (recompute_core_) core(att, B, T);  // selective recompute: the same kernel, the same bits
    proj_.backward(d_att, dout, att, N, tp, ws);
    if (bf16_)
      ops::attention_backward_bf16(dev_, d_qkv, d_att, qkv_out_.data(), att, lse_.data(), B, T, NH_,
                                   NKV_, HD_);
    else
      ops::attention_backward(dev_, d_qkv, d_att, qkv_out_.data(), att, lse_.data(), B, T, NH_, NKV_,
                              HD_);
    if (rotary_) rotary_->backward(d_qkv, B, T, NH_, NKV_);
    qkv_.backward(dx, d_qkv, x, N, tp, ws);
  }

  size_t saved_floats(int N) const override {
    return static_cast<size_t>(N) * (qkv_width() + (recompute_core_ ? 0 : NH_ * HD_) + NH_);
  }
  size_t scratch_floats(int N) const override {
    return static_cast<size_t>(N) * (qkv_width() + (recompute_core_ ? 2 : 1) * NH_ * HD_);
  }
  void set_saved_pool(Workspace* pool) override {
    pool_ = pool;
    qkv_out_ = att_out_ = lse_ = Tensor();
    N_ = 0;
  }
  void set_recompute_core(bool on) override {
    recompute_core_ = on;
    att_out_ = Tensor();
    N_ = 0;
  }
  void comm_elements(int N, SiteElements& e) const override {
    qkv_.comm_elements(N, e);
    proj_.comm_elements(N, e);
  }

 private:
  int qkv_width() const { return (NH_ + 2 * NKV_) * HD_; }
  void ensure(int N) {
    if (N == N_) return;
    N_ = N;
    qkv_out_ = saved("attn.qkv", {N, qkv_width()});
    if (!recompute_core_) att_out_ = saved("attn.out", {N, NH_ * HD_});
    lse_ = saved("attn.lse", {static_cast<int64_t>(N) * NH_});
  }
  Tensor saved(const char* name, std::vector<int64_t> shape) {
    return pool_ ? pool_->tensor(name, std::move(shape)) : Tensor(std::move(shape), dev_);
  }
  // The core's output: kept, or (selective recompute) scratch shared by every layer.
  float* att_out(int N, Workspace& ws) {
    return recompute_core_ ? ws.get("attn.core_out", static_cast<size_t>(N) * NH_ * HD_) : att_out_.data();
  }
  // o = softmax(q k^T / sqrt(d)) v from the saved (rotated) q, k, v; lse_ = its statistics.
  void core(float* att, int B, int T) {
    if (bf16_)
      ops::attention_forward_bf16(dev_, att, lse_.data(), qkv_out_.data(), B, T, NH_, NKV_, HD_);
    else
      ops::attention_forward(dev_, att, lse_.data(), qkv_out_.data(), B, T, NH_, NKV_, HD_);
  }

  Device dev_;
  bool bf16_;  // --bf16: attention GEMM operands in bf16
  int C_, HD_, NH_, NKV_;  // NH_, NKV_: this rank's query heads and K/V groups
  std::string prefix_;
  const RotaryEmbedding* rotary_;
  ColumnParallelLinear qkv_;
  RowParallelLinear proj_;
  int N_ = 0;
  bool recompute_core_ = false;
  Workspace* pool_ = nullptr;  // full recompute: where the saved tensors live
  Tensor qkv_out_, att_out_, lse_;  // saved for the backward (q, k rotated; att_out_ unless selective)
};

}  // namespace

std::unique_ptr<BlockPart> make_softmax_attention(const PartContext& c) {
  return std::make_unique<SoftmaxAttention>(c);
}

}  // namespace lossytp
