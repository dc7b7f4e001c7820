// The distributed optimizer (--use-distributed-optimizer: ZeRO-1 as Megatron-LM's). Instead of
// all-reducing the gradient arena over DP and updating the whole model on every DP rank:
//   1. the gradient arena (padded to equal blocks) is reduce-scattered over DP at site
//      "dp.grad": DP rank r receives the summed gradients of its contiguous block r;
//   2. the global gradient norm (clipping) is summed from the blocks over DP and TP, counting
//      replicated parameters' elements once (on TP rank 0), as ParamStore::grad_sq_contribution;
//   3. AdamW updates block r only, with moments held for that block only (models/adamw.h):
//      optimizer memory per rank / DP;
//   4. the updated blocks are all-gathered over DP into every rank's parameter arena at site
//      "dp.param". A lossy network there leaves DP replicas disagreeing on the weights.
// With DP = 1 the flag changes nothing (the trainer does not build this object).
#pragma once
#include <cstddef>

#include "models/adamw.h"
#include "models/param_store.h"
#include "sim/comm.h"
#include "sim/tensor.h"

namespace lossytp {

class DistributedOptimizer {
 public:
  // Pads params' arenas to dp equal blocks of optimizer_shard_numel(params.numel(), dp) floats
  // and allocates this rank's gradient block.
  DistributedOptimizer(ParamStore& params, int dp, int dp_rank);

  // This rank's block of the padded arena: arena elements [begin(), begin() + numel()).
  size_t begin() const { return begin_; }
  size_t numel() const { return n_; }
  int shards() const { return dp_; }
  // An AdamW whose state covers this rank's block only.
  AdamW make_adamw(const AdamWConfig& cfg) const { return AdamW(params_, cfg, begin_, n_, dp_); }

  // 1: dp.grad, the summed gradients of this rank's block into grad_shard().
  void reduce_scatter_grads(Comm& dp);
  // 2: this rank's part of the squared global norm (sum it over every rank of TP x DP).
  double grad_sq_contribution() const;
  void scale_grads(float s);
  float* grad_shard() { return grad_.data(); }
  // 4: dp.param, every rank's updated block into every rank's parameter arena.
  void all_gather_params(Comm& dp);

 private:
  ParamStore& params_;
  int dp_, dp_rank_;
  size_t begin_ = 0, n_ = 0;
  Tensor grad_;  // this rank's reduce-scattered gradient block; then the parameter block to send
};

}  // namespace lossytp
