#include "models/parallel_linear.h"

#include "kernels/cpu/ops.h"
#include "models/mappings.h"

namespace lossytp {

ColumnParallelLinear::ColumnParallelLinear(ParamStore& store, const std::string& name, int in,
                                           int out, float std)
    : store_(store), in_(in), out_local_(out / store.tp_size()), bwd_site_(name + ".bwd") {
  w_ = store.declare(name + ".weight", {out, in}, 0, Init::Normal, std, true);
  b_ = store.declare(name + ".bias", {out}, 0, Init::Zeros, 0.0f, false);
}

void ColumnParallelLinear::forward(float* y, const float* x, int N) {
  copy_to_tp_region_forward();
  cpu::matmul_forward(y, x, store_.value(w_), store_.value(b_), N, in_, out_local_);
}

void ColumnParallelLinear::backward(float* dx, const float* dy, const float* x, int N, Comm& tp) {
  cpu::matmul_backward(dx, store_.grad(w_), store_.grad(b_), dy, x, store_.value(w_), N, in_,
                       out_local_);
  copy_to_tp_region_backward(tp, dx, static_cast<size_t>(N) * in_, bwd_site_);
}

RowParallelLinear::RowParallelLinear(ParamStore& store, const std::string& name, int in, int out,
                                     float std)
    : store_(store), in_local_(in / store.tp_size()), out_(out), fwd_site_(name + ".fwd") {
  w_ = store.declare(name + ".weight", {out, in}, 1, Init::Normal, std, true);
  b_ = store.declare(name + ".bias", {out}, -1, Init::Zeros, 0.0f, false);
}

void RowParallelLinear::forward(float* y, const float* x, int N, Comm& tp) {
  cpu::matmul_forward(y, x, store_.value(w_), nullptr, N, in_local_, out_);
  reduce_from_tp_region_forward(tp, y, static_cast<size_t>(N) * out_, fwd_site_);
  const float* b = store_.value(b_);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* row = y + static_cast<size_t>(n) * out_;
#pragma omp simd
    for (int o = 0; o < out_; ++o) row[o] += b[o];
  }
}

void RowParallelLinear::backward(float* dx, const float* dy, const float* x, int N) {
  reduce_from_tp_region_backward();
  cpu::matmul_backward(dx, store_.grad(w_), store_.grad(b_), dy, x, store_.value(w_), N,
                       in_local_, out_);
}

}  // namespace lossytp
