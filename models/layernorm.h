// LayerNorm over the hidden dim, replicated on every TP rank (its input is replicated).
#pragma once
#include <string>

#include "kernels/ops.h"
#include "models/param_store.h"

namespace lossytp {

class LayerNorm {
 public:
  LayerNorm(ParamStore& store, const std::string& name, int C) : store_(store), C_(C) {
    w_ = store.declare(name + ".weight", {C}, -1, Init::Ones, 0.0f, false);
    b_ = store.declare(name + ".bias", {C}, -1, Init::Zeros, 0.0f, false);
  }
  // out = LN(x); saves mean and rstd for the backward.
  void forward(float* out, const float* x, int N) {
    if (mean_.numel() != static_cast<size_t>(N)) {
      mean_ = Tensor({N}, store_.device());
      rstd_ = Tensor({N}, store_.device());
    }
    ops::layernorm_forward(store_.device(), out, mean_.data(), rstd_.data(), x, store_.value(w_),
                           store_.value(b_), N, C_);
  }
  // dx += LN'(x)^T dout; dweight, dbias accumulate.
  void backward(float* dx, const float* dout, const float* x, int N) {
    ops::layernorm_backward(store_.device(), dx, store_.grad(w_), store_.grad(b_), dout, x,
                            store_.value(w_), mean_.data(), rstd_.data(), N, C_);
  }
  int weight_index() const { return w_; }
  int bias_index() const { return b_; }

 private:
  ParamStore& store_;
  int C_, w_, b_;
  Tensor mean_, rstd_;
};

}  // namespace lossytp
