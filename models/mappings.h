// The tensor-parallel regions, named as in Megatron-LM's tensor_parallel/mappings.py, so a
// reader sees what moves in forward and in backward at each communication point.
#pragma once
#include <string>
#include <vector>

#include "sim/comm.h"
#include "sim/tensor.h"

namespace lossytp {

// copy_to_tensor_model_parallel_region: forward identity (every TP rank already holds the
// replicated input); backward all-reduces the input gradient, the sum of each shard's part.
inline void copy_to_tp_region_forward() {}
inline void copy_to_tp_region_backward(Comm& tp, float* grad, size_t n, const std::string& site) {
  tp.all_reduce(grad, n, site);
}

// reduce_from_tensor_model_parallel_region: forward all-reduces the shards' partial sums;
// backward identity (the output gradient is replicated already).
inline void reduce_from_tp_region_forward(Comm& tp, float* x, size_t n, const std::string& site) {
  tp.all_reduce(x, n, site);
}
inline void reduce_from_tp_region_backward() {}

// The sequence-parallel regions (--sequence-parallel), on [N, C] row-major tensors whose N
// token rows are split over TP in rank order (rank r holds rows [r N/tp, (r+1) N/tp)):
// gather_from_sequence_parallel_region: forward all-gathers the rows (full [N, C] on every
// rank); its backward is a reduce-scatter (the caller names both sites).
inline void gather_from_sp_region(Comm& tp, const float* shard, float* full, int N, int C,
                                  const std::string& site) {
  tp.all_gather(shard, full, static_cast<size_t>(N / tp.size()) * C, site);
}
// reduce_scatter_to_sequence_parallel_region: forward sums the ranks' partial [N, C] and leaves
// each rank its rows; its backward is an all-gather.
inline void reduce_scatter_to_sp_region(Comm& tp, const float* full, float* shard, int N, int C,
                                        const std::string& site) {
  tp.reduce_scatter(full, shard, static_cast<size_t>(N / tp.size()) * C, site);
}
// scatter_to_sequence_parallel_region: forward keeps this rank's rows of a replicated [N, C]
// (no communication); its backward all-gathers (gather_from_sp_region).
void scatter_to_sp_region(Device dev, const float* full, float* shard, int N, int C, int tp_rank,
                          int tp_size);

// CAAT-Net's partial_reduce_from_tensor_model_parallel_region, on x = [N, C]: only the first
// `sync` channels of every row are all-reduced; the others keep this rank's partial sum,
// multiplied by `scale` (sqrt(tp)). Its backward does the same to the output gradient, so
// forward and backward share this one function. x lives on `dev`; `pack` is scratch there.
void partial_reduce_from_tp_region(Comm& tp, Device dev, float* x, int N, int C, int sync,
                                   float scale, const std::string& site, Tensor& pack);

}  // namespace lossytp
