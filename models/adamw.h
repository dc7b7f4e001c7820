// AdamW over a ParamStore's arena, with Megatron's convention: weight decay on matrices and
// embeddings, none on biases and LayerNorm parameters. Moments live in arenas that mirror the
// parameter arena, so a checkpoint is three flat buffers.
// With the distributed optimizer (ZeRO-1) the moments cover one contiguous range of the arena,
// this DP rank's shard: optimizer memory per rank is divided by the DP size.
#pragma once
#include <cstddef>
#include <cstdint>

#include "models/param_store.h"
#include "sim/tensor.h"

namespace lossytp {

struct AdamWConfig {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
};

// Floats per DP shard of an arena of `numel` floats split over `shards` ranks: the arena padded
// to a multiple of 16 x shards (every shard 64-byte aligned), divided by shards. Checkpoints
// rely on it to know the size of a sharded optimizer state.
size_t optimizer_shard_numel(size_t numel, int shards);

class AdamW {
 public:
  // State for the whole arena.
  AdamW(ParamStore& store, AdamWConfig cfg);
  // State for arena elements [begin, begin + n) only: one of `shards` equal DP shards.
  AdamW(ParamStore& store, AdamWConfig cfg, size_t begin, size_t n, int shards);
  // One update with learning rate lr; the step counter t advances first (bias correction).
  // step(lr) reads the store's gradient arena; step(lr, grad) takes grad[i] as the gradient of
  // arena element begin() + i (the reduce-scattered shard). Either updates only begin()..end.
  void step(float lr);
  void step(float lr, const float* grad);
  int64_t t() const { return t_; }
  void set_t(int64_t t) { t_ = t; }
  Tensor& m() { return m_; }
  Tensor& v() { return v_; }
  size_t begin() const { return begin_; }
  size_t numel() const { return n_; }
  // 1: the whole arena; > 1: sharded over that many DP ranks (recorded in checkpoints).
  int shards() const { return shards_; }

 private:
  ParamStore& store_;
  AdamWConfig cfg_;
  size_t begin_ = 0, n_ = 0;
  int shards_ = 1;
  Tensor m_, v_;
  int64_t t_ = 0;
};

}  // namespace lossytp
