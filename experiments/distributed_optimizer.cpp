#include "experiments/distributed_optimizer.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "kernels/ops.h"

namespace lossytp {

DistributedOptimizer::DistributedOptimizer(ParamStore& params, int dp, int dp_rank)
    : params_(params), dp_(dp), dp_rank_(dp_rank) {
  n_ = optimizer_shard_numel(params.numel(), dp);
  begin_ = n_ * static_cast<size_t>(dp_rank);
  params.pad_arenas(n_ * static_cast<size_t>(dp));
  grad_ = Tensor({static_cast<int64_t>(n_)}, params.device());
}

void DistributedOptimizer::reduce_scatter_grads(Comm& dp) {
  dp.reduce_scatter(params_.grads().data(), grad_.data(), n_, "dp.grad");
}

double DistributedOptimizer::grad_sq_contribution() const {
  // Per element range: the part of each parameter inside this block (padding between
  // parameters and at the end is skipped; it is zero anyway). Replicated parameters count on
  // TP rank 0 only, so the TP sum sees them once; pipeline copies never.
  std::vector<std::pair<const float*, size_t>> spans;
  const size_t end = begin_ + n_;
  for (const ParamSpec& s : params_.specs()) {
    if ((s.shard_dim < 0 && params_.tp_rank() != 0) || s.pipeline_copy) continue;
    const size_t lo = std::max(s.offset, begin_), hi = std::min(s.offset + s.numel(), end);
    if (lo < hi) spans.emplace_back(grad_.data() + (lo - begin_), hi - lo);
  }
  return ops::sum_squares(params_.device(), spans);
}

void DistributedOptimizer::scale_grads(float s) { ops::scale_inplace(params_.device(), grad_.data(), s, n_); }

void DistributedOptimizer::all_gather_params(Comm& dp) {
  // The block goes through a separate buffer (the gradient block, no longer needed) so that the
  // collective's input and output never alias.
  ops::copy(params_.device(), grad_.data(), params_.values().data() + begin_, n_);
  dp.all_gather(grad_.data(), params_.values().data(), n_, "dp.param");
}

}  // namespace lossytp
