#include "models/mappings.h"

#include <cstring>

namespace lossytp {

void partial_reduce_from_tp_region(Comm& tp, float* x, int N, int C, int sync, float scale,
                                   const std::string& site, std::vector<float>& pack) {
  if (sync >= C) {  // p = 1: the whole tensor, no packing
    tp.all_reduce(x, static_cast<size_t>(N) * C, site);
    return;
  }
  if (sync > 0) {
    pack.resize(static_cast<size_t>(N) * sync);
    for (int n = 0; n < N; ++n)
      std::memcpy(pack.data() + static_cast<size_t>(n) * sync, x + static_cast<size_t>(n) * C, sync * sizeof(float));
    tp.all_reduce(pack.data(), pack.size(), site);
    for (int n = 0; n < N; ++n)
      std::memcpy(x + static_cast<size_t>(n) * C, pack.data() + static_cast<size_t>(n) * sync, sync * sizeof(float));
  } else {
    tp.all_reduce(nullptr, 0, site);  // keeps the call index in step with the other ranks
  }
  for (int n = 0; n < N; ++n) {
    float* row = x + static_cast<size_t>(n) * C;
    for (int c = sync; c < C; ++c) row[c] *= scale;
  }
}

}  // namespace lossytp
