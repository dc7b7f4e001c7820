#include "models/mappings.h"

#include "kernels/ops.h"

namespace lossytp {

void scatter_to_sp_region(Device dev, const float* full, float* shard, int N, int C, int tp_rank,
                          int tp_size) {
  const size_t n = static_cast<size_t>(N / tp_size) * C;
  ops::copy(dev, shard, full + tp_rank * n, n);
}

void partial_reduce_from_tp_region(Comm& tp, Device dev, float* x, int N, int C, int sync,
                                   float scale, const std::string& site, Tensor& pack) {
  if (sync >= C) {  // p = 1: the whole tensor, no packing
    tp.all_reduce(x, static_cast<size_t>(N) * C, site);
    return;
  }
  if (sync > 0) {
    const size_t n = static_cast<size_t>(N) * sync;
    if (pack.numel() < n) pack = Tensor({static_cast<int64_t>(n)}, dev);
    ops::copy_cols(dev, pack.data(), sync, x, C, N, sync);
    tp.all_reduce(pack.data(), n, site);
    ops::copy_cols(dev, x, C, pack.data(), sync, N, sync);
  } else {
    tp.all_reduce(nullptr, 0, site);  // keeps the call index in step with the other ranks
  }
  ops::scale_cols(dev, x, N, C, sync, scale);
}

}  // namespace lossytp
