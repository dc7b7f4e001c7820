#include "models/parallel_linear.h"

#include <cmath>

#include "kernels/cpu/ops.h"
#include "models/mappings.h"

namespace lossytp {

ColumnParallelLinear::ColumnParallelLinear(ParamStore& store, const std::string& name, int in,
                                           int out, float std, TPOptions opt)
    : store_(store), in_(in), out_local_(out / store.tp_size()), opt_(opt), bwd_site_(name + ".bwd") {
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
  if (!opt_.caat) copy_to_tp_region_backward(tp, dx, static_cast<size_t>(N) * in_, bwd_site_);
}

RowParallelLinear::RowParallelLinear(ParamStore& store, const std::string& name, int in, int out,
                                     float std, TPOptions opt)
    : store_(store), in_local_(in / store.tp_size()), out_(out), opt_(opt), fwd_site_(name + ".fwd"),
      bwd_site_(name + ".bwd") {
  w_ = store.declare(name + ".weight", {out, in}, 1, Init::Normal, std, true);
  b_ = store.declare(name + ".bias", {out}, -1, Init::Zeros, 0.0f, false);
}

void RowParallelLinear::forward(float* y, const float* x, int N, Comm& tp) {
  cpu::matmul_forward(y, x, store_.value(w_), nullptr, N, in_local_, out_);
  if (opt_.caat)
    partial_reduce_from_tp_region(tp, y, N, out_, opt_.synced_channels(out_),
                                  std::sqrt(static_cast<float>(tp.size())), fwd_site_, pack_);
  else
    reduce_from_tp_region_forward(tp, y, static_cast<size_t>(N) * out_, fwd_site_);
  const float* b = store_.value(b_);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* row = y + static_cast<size_t>(n) * out_;
#pragma omp simd
    for (int o = 0; o < out_; ++o) row[o] += b[o];
  }
}

void RowParallelLinear::backward(float* dx, const float* dy, const float* x, int N, Comm& tp) {
  if (!opt_.caat) {
    reduce_from_tp_region_backward();
    cpu::matmul_backward(dx, store_.grad(w_), store_.grad(b_), dy, x, store_.value(w_), N,
                         in_local_, out_);
    return;
  }
  // The bias is added after the reduce: its gradient is dy itself (a partial sum, summed over
  // TP with the other replicated parameters). The weights see dy after the partial reduce.
  float* db = store_.grad(b_);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < out_; ++o) db[o] += dy[static_cast<size_t>(n) * out_ + o];
  dy_.assign(dy, dy + static_cast<size_t>(N) * out_);
  partial_reduce_from_tp_region(tp, dy_.data(), N, out_, opt_.synced_channels(out_),
                                std::sqrt(static_cast<float>(tp.size())), bwd_site_, pack_);
  cpu::matmul_backward(dx, store_.grad(w_), nullptr, dy_.data(), x, store_.value(w_), N,
                       in_local_, out_);
}

}  // namespace lossytp
