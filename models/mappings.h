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

// CAAT-Net's partial_reduce_from_tensor_model_parallel_region, on x = [N, C]: only the first
// `sync` channels of every row are all-reduced; the others keep this rank's partial sum,
// multiplied by `scale` (sqrt(tp)). Its backward does the same to the output gradient, so
// forward and backward share this one function. x lives on `dev`; `pack` is scratch there.
void partial_reduce_from_tp_region(Comm& tp, Device dev, float* x, int N, int C, int sync,
                                   float scale, const std::string& site, Tensor& pack);

}  // namespace lossytp
