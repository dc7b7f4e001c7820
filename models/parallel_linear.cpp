#include "models/parallel_linear.h"

#include <cmath>

#include "models/linear.h"
#include "models/mappings.h"

namespace lossytp {

ColumnParallelLinear::ColumnParallelLinear(ParamStore& store, const std::string& name, int in,
                                           int out, float std, TPOptions opt, bool bias,
                                           int stride)
    : store_(store), in_(in), out_local_(out / store.tp_size()), opt_(opt), fwd_site_(name + ".fwd"),
      bwd_site_(name + ".bwd"), regather_site_(name + ".regather.bwd") {
  w_ = store.declare(name + ".weight", {out, in}, 0, Init::Normal, std, true, stride);
  b_ = bias ? store.declare(name + ".bias", {out}, 0, Init::Zeros, 0.0f, false, stride) : -1;
}

void ColumnParallelLinear::comm_elements(int N, SiteElements& e) const {
  const double n = static_cast<double>(N) * in_;
  if (opt_.sequence_parallel) {
    e.gathered[fwd_site_] += n;
    e.gathered[regather_site_] += n;
    e.gathered[bwd_site_] += n;
  } else if (!opt_.caat) {
    e[bwd_site_] += n;
  }
}

void ColumnParallelLinear::forward(float* y, const float* x, int N, Comm& tp, Workspace& ws) {
  if (opt_.sequence_parallel) {
    float* full = ws.get("sp.full", static_cast<size_t>(N) * in_);
    gather_from_sp_region(tp, x, full, N, in_, fwd_site_);
    x = full;
  } else {
    copy_to_tp_region_forward();
  }
  linear_forward(store_.compute(), y, x, store_.value(w_), b_ >= 0 ? store_.value(b_) : nullptr, N, in_, out_local_);
}

void ColumnParallelLinear::backward(float* dx, const float* dy, const float* x, int N, Comm& tp,
                                    Workspace& ws) {
  if (opt_.sequence_parallel) {
    // Megatron's LinearWithGradAccumulationAndAsyncCommunication: the input is gathered again
    // (only the shard was kept), the input gradient is reduce-scattered back to the shard.
    float* full = ws.get("sp.full", static_cast<size_t>(N) * in_);
    float* dfull = ws.get("sp.full_dx", static_cast<size_t>(N) * in_);
    gather_from_sp_region(tp, x, full, N, in_, regather_site_);
    linear_backward(store_.compute(), dfull, store_.grad(w_), b_ >= 0 ? store_.grad(b_) : nullptr, dy,
                    full, store_.value(w_), N, in_, out_local_);
    reduce_scatter_to_sp_region(tp, dfull, dx, N, in_, bwd_site_);
    return;
  }
  linear_backward(store_.compute(), dx, store_.grad(w_), b_ >= 0 ? store_.grad(b_) : nullptr, dy, x,
                  store_.value(w_), N, in_, out_local_);
  if (!opt_.caat) copy_to_tp_region_backward(tp, dx, static_cast<size_t>(N) * in_, bwd_site_);
}

RowParallelLinear::RowParallelLinear(ParamStore& store, const std::string& name, int in, int out,
                                     float std, TPOptions opt, bool bias)
    : store_(store), in_local_(in / store.tp_size()), out_(out), opt_(opt), fwd_site_(name + ".fwd"),
      bwd_site_(name + ".bwd") {
  w_ = store.declare(name + ".weight", {out, in}, 1, Init::Normal, std, true);
  b_ = bias ? store.declare(name + ".bias", {out}, -1, Init::Zeros, 0.0f, false) : -1;
}

void RowParallelLinear::comm_elements(int N, SiteElements& e) const {
  const double n = static_cast<double>(N) * opt_.synced_channels(out_);
  if (opt_.sequence_parallel) {
    e.gathered[fwd_site_] += n;
    e.gathered[bwd_site_] += n;
    return;
  }
  e[fwd_site_] += n;
  if (opt_.caat) e[bwd_site_] += n;
}

void RowParallelLinear::forward(float* y, const float* x, int N, Comm& tp, Workspace& ws) {
  const Device dev = store_.device();
  if (opt_.sequence_parallel) {
    float* partial = ws.get("sp.full", static_cast<size_t>(N) * out_);
    linear_forward(store_.compute(), partial, x, store_.value(w_), nullptr, N, in_local_, out_);
    reduce_scatter_to_sp_region(tp, partial, y, N, out_, fwd_site_);
    if (b_ >= 0) ops::bias_add(dev, y, store_.value(b_), opt_.rows(N, tp.size()), out_);
    return;
  }
  linear_forward(store_.compute(), y, x, store_.value(w_), nullptr, N, in_local_, out_);
  if (opt_.caat)
    partial_reduce_from_tp_region(tp, dev, y, N, out_, opt_.synced_channels(out_),
                                  std::sqrt(static_cast<float>(tp.size())), fwd_site_, pack_);
  else
    reduce_from_tp_region_forward(tp, y, static_cast<size_t>(N) * out_, fwd_site_);
  if (b_ >= 0) ops::bias_add(dev, y, store_.value(b_), N, out_);
}

void RowParallelLinear::backward(float* dx, const float* dy, const float* x, int N, Comm& tp,
                                 Workspace& ws) {
  if (opt_.sequence_parallel) {
    // The bias was added to this rank's rows: its gradient is their sum (a partial sum).
    if (b_ >= 0) ops::bias_grad(store_.device(), store_.grad(b_), dy, opt_.rows(N, tp.size()), out_);
    float* full = ws.get("sp.full", static_cast<size_t>(N) * out_);
    gather_from_sp_region(tp, dy, full, N, out_, bwd_site_);
    linear_backward(store_.compute(), dx, store_.grad(w_), nullptr, full, x, store_.value(w_), N,
                    in_local_, out_);
    return;
  }
  if (!opt_.caat) {
    reduce_from_tp_region_backward();
    linear_backward(store_.compute(), dx, store_.grad(w_), b_ >= 0 ? store_.grad(b_) : nullptr, dy,
                    x, store_.value(w_), N, in_local_, out_);
    return;
  }
  // The bias is added after the reduce: its gradient is dy itself (a partial sum, summed over
  // TP with the other replicated parameters). The weights see dy after the partial reduce.
  const Device dev = store_.device();
  const size_t n = static_cast<size_t>(N) * out_;
  if (b_ >= 0) ops::bias_grad(dev, store_.grad(b_), dy, N, out_);
  if (dy_.numel() != n) dy_ = Tensor({static_cast<int64_t>(n)}, dev);
  ops::copy(dev, dy_.data(), dy, n);
  partial_reduce_from_tp_region(tp, dev, dy_.data(), N, out_, opt_.synced_channels(out_),
                                std::sqrt(static_cast<float>(tp.size())), bwd_site_, pack_);
  linear_backward(store_.compute(), dx, store_.grad(w_), nullptr, dy_.data(), x,
                  store_.value(w_), N, in_local_, out_);
}

}  // namespace lossytp
