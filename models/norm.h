// The norm of a block (and the final norm), replicated on every TP rank (its input is
// replicated): LayerNorm (weight and bias) or RMSNorm (weight only), eps = --norm-epsilon.
// Under CAAT its parameter gradients are per-rank partial sums, summed over TP by
// GPTModel::reduce_partial_grads as every replicated parameter's.
#pragma once
#include <string>

#include "kernels/ops.h"
#include "models/param_store.h"
#include "models/workspace.h"

namespace lossytp {

class Norm {
 public:
  Norm(ParamStore& store, const std::string& name, int C, const std::string& kind, float eps)
      : store_(store), name_(name), C_(C), rms_(kind == "RMSNorm"), eps_(eps) {
    w_ = store.declare(name + ".weight", {C}, -1, Init::Ones, 0.0f, false);
    b_ = rms_ ? -1 : store.declare(name + ".bias", {C}, -1, Init::Zeros, 0.0f, false);
  }
  // Where the row statistics live from forward to backward: the norm's own buffers (nullptr), or
  // `pool` (pipeline parallelism: one pool per micro-batch in flight).
  void set_saved_pool(Workspace* pool) {
    pool_ = pool;
    rstd_ = mean_ = Tensor();
  }
  // out = norm(x); saves the row statistics for the backward.
  void forward(float* out, const float* x, int N) {
    bind(N);
    if (rms_)
      ops::rmsnorm_forward(store_.device(), out, rstd_.data(), x, store_.value(w_), N, C_, eps_);
    else
      ops::layernorm_forward(store_.device(), out, mean_.data(), rstd_.data(), x, store_.value(w_),
                             store_.value(b_), N, C_, eps_);
  }
  // dx += norm'(x)^T dout; the parameter gradients accumulate.
  void backward(float* dx, const float* dout, const float* x, int N) {
    if (pool_) bind(N);
    if (rms_)
      ops::rmsnorm_backward(store_.device(), dx, store_.grad(w_), dout, x, store_.value(w_),
                            rstd_.data(), N, C_);
    else
      ops::layernorm_backward(store_.device(), dx, store_.grad(w_), store_.grad(b_), dout, x,
                              store_.value(w_), mean_.data(), rstd_.data(), N, C_);
  }
  // Floats kept from forward to backward per token (for --dry-run).
  int saved_per_token() const { return rms_ ? 1 : 2; }

 private:
  void bind(int N) {
    if (pool_) {
      rstd_ = pool_->tensor(name_ + ".rstd", {N});
      if (!rms_) mean_ = pool_->tensor(name_ + ".mean", {N});
    } else if (rstd_.numel() != static_cast<size_t>(N)) {
      rstd_ = Tensor({N}, store_.device());
      if (!rms_) mean_ = Tensor({N}, store_.device());
    }
  }
  ParamStore& store_;
  std::string name_;
  Workspace* pool_ = nullptr;
  int C_;
  bool rms_;
  float eps_;
  int w_, b_;
  Tensor mean_, rstd_;
};

}  // namespace lossytp
