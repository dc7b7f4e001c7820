// ParamStore: every parameter of a rank's shard lives in one contiguous arena, and so does every
// gradient, so the DP all-reduce, clipping, the optimizer and checkpoints each touch one buffer.
// Layers declare their parameters (with the full, unsharded shape and how it is split over TP),
// then allocate() lays out the arenas (on the compute device) and init() draws the values.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/config.h"
#include "sim/tensor.h"

namespace lossytp {

enum class Init { Normal, Zeros, Ones, Constant };  // Constant: every element = std

struct ParamSpec {
  std::string name;               // "layer0.attn.qkv.weight"
  std::vector<int64_t> full;      // unsharded shape
  int shard_dim = -1;             // -1: replicated on every TP rank; else split along this dim
  // Megatron's partition stride: the sharded dim is `stride` equal parts, each split over TP,
  // and a rank holds its slice of every part, concatenated (SwiGLU's fc1: [gate_r; up_r]).
  int stride = 1;
  Init init = Init::Normal;
  float std = 0.02f;
  bool weight_decay = true;
  // A copy of a parameter another pipeline stage owns (the tied embedding table on the last
  // stage): its gradient is left out of the global gradient norm, which counts the owner's.
  bool pipeline_copy = false;
  size_t offset = 0;              // into the arenas, set by allocate()
  std::vector<int64_t> local;     // this rank's shape
  size_t numel() const;
};

// A parameter's values between its full (unsharded) row-major layout and one TP rank's shard of
// it (shard_dim, stride): checkpoints imported from or exported to other formats.
void copy_shard(const ParamSpec& s, int tp_rank, int tp_size, const float* full, float* local);
void place_shard(const ParamSpec& s, int tp_rank, int tp_size, const float* local, float* full);

class ParamStore {
 public:
  ParamStore(int tp_rank, int tp_size, Compute compute = {})
      : tp_rank_(tp_rank), tp_size_(tp_size), compute_(compute) {}
  // Returns the index of the parameter; views are valid after allocate().
  int declare(std::string name, std::vector<int64_t> full, int shard_dim, Init init,
              float std = 0.0f, bool weight_decay = true, int stride = 1);
  // Lays out the arenas (offsets, numel()) without allocating them: --dry-run stops here.
  void plan();
  // plan(), then allocates both arenas on the compute device.
  void allocate();
  // Draws every parameter from (seed, name, index in the FULL matrix): a pure function, so the
  // numbers of a run do not depend on the TP size.
  void init(uint64_t seed);

  float* value(int i) { return values_.data() + specs_[i].offset; }
  float* grad(int i) { return grads_.data() + specs_[i].offset; }
  const ParamSpec& spec(int i) const { return specs_[i]; }
  void mark_pipeline_copy(int i) { specs_[i].pipeline_copy = true; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  Tensor& values() { return values_; }
  Tensor& grads() { return grads_; }
  size_t numel() const { return total_; }
  // Grows both arenas to a multiple of `multiple` floats (values kept, the tail zero) so that a
  // collective can split them into equal blocks (the distributed optimizer's DP shards).
  // numel() is unchanged; padded_numel() is the arenas' length.
  void pad_arenas(size_t multiple);
  size_t padded_numel() const { return values_.numel(); }
  int tp_rank() const { return tp_rank_; }
  int tp_size() const { return tp_size_; }
  // Where the arenas live (every layer computes there) and whether GEMMs run in bf16.
  const Compute& compute() const { return compute_; }
  Device device() const { return compute_.device; }

  // Sum of squared gradients this rank contributes to the global norm: sharded parameters
  // always, replicated ones only on tp_rank 0 so the TP all-reduce counts them once; pipeline
  // copies never.
  double grad_sq_contribution() const;

 private:
  int tp_rank_, tp_size_;
  Compute compute_;
  std::vector<ParamSpec> specs_;
  Tensor values_, grads_;
  size_t total_ = 0;
};

}  // namespace lossytp
