#include "experiments/replica_divergence.h"

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/ops.h"
#include "sim/tensor.h"

namespace lossytp {

namespace {

constexpr size_t kChunk = size_t{1} << 20;  // floats per broadcast

// The largest relative distance of this rank's copies of the parameters `which` to the group
// root's copies (0 on the root itself).
double divergence_in(Backend& group, ParamStore& params, const std::vector<int>& which) {
  if (group.size() <= 1 || which.empty()) return 0.0;
  const Device dev = params.device();
  size_t largest = 0;
  for (int i : which) largest = std::max(largest, params.spec(i).numel());
  const size_t chunk = std::min(kChunk, largest);
  Tensor ref({static_cast<int64_t>(chunk)}, dev), mine_dev;
  std::vector<float> ref_h, mine_h;
  if (dev != Device::CPU) {
    mine_dev = Tensor({static_cast<int64_t>(chunk)}, dev);
    ref_h.resize(chunk);
    mine_h.resize(chunk);
  }
  double worst = 0.0;
  for (int i : which) {
    const size_t n = params.spec(i).numel();
    double d2 = 0.0, r2 = 0.0, m2 = 0.0;
    for (size_t lo = 0; lo < n; lo += chunk) {
      const size_t k = std::min(chunk, n - lo);
      const float* x = params.value(i) + lo;
      ops::copy(dev, ref.data(), x, k);
      group.broadcast(ref.data(), k * sizeof(float), 0);
      const float* a = x;
      const float* b = ref.data();
      if (dev != Device::CPU) {
        ops::copy(dev, mine_dev.data(), x, k);
        mine_dev.flat(0, k, {static_cast<int64_t>(k)}).copy_to_host(mine_h.data());
        ref.flat(0, k, {static_cast<int64_t>(k)}).copy_to_host(ref_h.data());
        a = mine_h.data();
        b = ref_h.data();
      }
      for (size_t j = 0; j < k; ++j) {
        const double d = static_cast<double>(a[j]) - b[j];
        d2 += d * d;
        r2 += static_cast<double>(b[j]) * b[j];
        m2 += static_cast<double>(a[j]) * a[j];
      }
    }
    const double den = r2 > 0 ? r2 : m2;
    double rel = d2 == 0 ? 0.0 : den > 0 ? std::sqrt(d2 / den) : std::numeric_limits<double>::infinity();
    if (!std::isfinite(rel)) rel = std::numeric_limits<double>::infinity();
    worst = std::max(worst, rel);
  }
  return worst;
}

}  // namespace

ReplicaDivergence measure_replica_divergence(ParamStore& params, Backend& tp, Backend& dp, Backend& run) {
  std::vector<int> all, replicated;
  for (size_t i = 0; i < params.specs().size(); ++i) {
    all.push_back(static_cast<int>(i));
    if (params.spec(static_cast<int>(i)).shard_dim < 0) replicated.push_back(static_cast<int>(i));
  }
  double v[2] = {divergence_in(dp, params, all), divergence_in(tp, params, replicated)};
  run.all_reduce_f64(v, 2, ReduceOp::Max);
  return {v[0], v[1]};
}

}  // namespace lossytp
