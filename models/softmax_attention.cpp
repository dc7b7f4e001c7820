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
// Context parallelism (models/context_parallel.h): the rows are this CP rank's chunks of every
// sequence, RoPE rotates them at their global positions (the model's tables), and the core is
// ContextParallelAttention over the CP group, on q, k, v re-laid out head-major.
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "kernels/ops.h"
#include "models/context_parallel.h"
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
    if (cpa_) cp_forward(att, B, T, ws);
    else core(att, B, T);
    proj_.forward(out, att, N, tp, ws);
  }

  void backward(float* dx, const float* dout, const float* x, int B, int T, Comm& tp,
                Workspace& ws) override {
    const int N = B * T;
    ensure(N);  // the saved tensors of the pool in use (pipeline: this micro-batch's)
    float* d_att = ws.get("attn.d_out", static_cast<size_t>(N) * NH_ * HD_);
    float* d_qkv = ws.get("attn.d_qkv", static_cast<size_t>(N) * qkv_width());
    float* att = att_out(N, ws);
    if (recompute_core_) core(att, B, T);  // selective recompute: the same kernel, the same bits
    proj_.backward(d_att, dout, att, N, tp, ws);
    if (cpa_)
      cp_backward(d_qkv, d_att, att, B, T, ws);
    else if (bf16_)
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
  void set_context_parallel(Comm* cp, const std::string& type) override {
    cp_ = cp;
    cpa_.reset();
    if (!cp || cp->size() == 1) return;
    if (dev_ != Device::CPU) throw std::invalid_argument("context parallelism is not yet implemented on CUDA");
    if (bf16_) throw std::invalid_argument("context parallelism does not support --bf16 attention yet");
    cpa_ = std::make_unique<ContextParallelAttention>(type, NH_, NKV_, HD_, dev_);
  }

 private:
  // Between the fused grouped layout of the rows ([N, NKV, NH/NKV + 2, HD]: the group's query
  // heads, then k, then v) and the head-major q [B, NH, T, HD], k, v [B, NKV, T, HD] of
  // ContextParallelAttention; to_heads = false writes back (gradients).
  void relayout_qkv(float* qkv, float* q, float* k, float* v, int B, int T, bool to_heads) const {
    const int R = NH_ / NKV_;
    const size_t hd = static_cast<size_t>(HD_) * sizeof(float);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int g = 0; g < NKV_; ++g) {
          float* row = qkv + ((static_cast<size_t>(b) * T + t) * NKV_ + g) * (R + 2) * HD_;
          for (int s = 0; s < R + 2; ++s) {
            float* head = s < R ? q + ((static_cast<size_t>(b) * NH_ + g * R + s) * T + t) * HD_
                                : (s == R ? k : v) + ((static_cast<size_t>(b) * NKV_ + g) * T + t) * HD_;
            if (to_heads) std::memcpy(head, row + s * HD_, hd);
            else std::memcpy(row + s * HD_, head, hd);
          }
        }
  }
  // Between att [N, NH, HD] (the projection's input) and head-major o [B, NH, T, HD].
  void relayout_out(float* att, float* o, int B, int T, bool to_heads) const {
    const size_t hd = static_cast<size_t>(HD_) * sizeof(float);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < NH_; ++h) {
          float* a = att + ((static_cast<size_t>(b) * T + t) * NH_ + h) * HD_;
          float* x = o + ((static_cast<size_t>(b) * NH_ + h) * T + t) * HD_;
          if (to_heads) std::memcpy(x, a, hd);
          else std::memcpy(a, x, hd);
        }
  }
  // lse_ holds [B, NH, T] under context parallelism (only cp_backward reads it).
  void cp_forward(float* att, int B, int T, Workspace& ws) {
    const size_t N = static_cast<size_t>(B) * T;
    float* q = ws.get("cpattn.q", N * NH_ * HD_);
    float* k = ws.get("cpattn.k", N * NKV_ * HD_);
    float* v = ws.get("cpattn.v", N * NKV_ * HD_);
    float* o = ws.get("cpattn.o", N * NH_ * HD_);
    relayout_qkv(qkv_out_.data(), q, k, v, B, T, true);
    cpa_->forward(o, lse_.data(), q, k, v, B, T, *cp_, prefix_, ws);
    relayout_out(att, o, B, T, false);
  }
  void cp_backward(float* d_qkv, float* d_att, float* att, int B, int T, Workspace& ws) {
    const size_t N = static_cast<size_t>(B) * T;
    float* q = ws.get("cpattn.q", N * NH_ * HD_);
    float* k = ws.get("cpattn.k", N * NKV_ * HD_);
    float* v = ws.get("cpattn.v", N * NKV_ * HD_);
    float* o = ws.get("cpattn.o", N * NH_ * HD_);
    float* dout = ws.get("cpattn.dout", N * NH_ * HD_);
    float* dq = ws.get("cpattn.dq", N * NH_ * HD_);
    float* dk = ws.get("cpattn.dk", N * NKV_ * HD_);
    float* dv = ws.get("cpattn.dv", N * NKV_ * HD_);
    relayout_qkv(qkv_out_.data(), q, k, v, B, T, true);
    relayout_out(att, o, B, T, true);
    relayout_out(d_att, dout, B, T, true);
    cpa_->backward(dq, dk, dv, dout, q, k, v, o, lse_.data(), B, T, *cp_, prefix_, ws);
    relayout_qkv(d_qkv, dq, dk, dv, B, T, false);
  }

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
  Comm* cp_ = nullptr;  // context parallelism: the CP group, and the core over it
  std::unique_ptr<ContextParallelAttention> cpa_;
  Tensor qkv_out_, att_out_, lse_;  // saved for the backward (q, k rotated; att_out_ unless selective)
};

}  // namespace

std::unique_ptr<BlockPart> make_softmax_attention(const PartContext& c) {
  return std::make_unique<SoftmaxAttention>(c);
}

}  // namespace lossytp
