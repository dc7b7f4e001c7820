// The model: a vocab-parallel embedding (+ learned absolute positions unless RoPE), a stack of
// transformer blocks assembled from the layer spec (models/layer_spec.h), a final norm and the
// output layer (tied to the embedding or not), with Megatron's vocab-parallel cross-entropy.
// GPT-2 and the Llama family are this one class with different ModelConfigs, as in Megatron's
// GPTModel. One object per rank holds that rank's shard.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/config.h"
#include "models/norm.h"
#include "models/output_layer.h"
#include "models/param_store.h"
#include "models/rotary.h"
#include "models/transformer_block.h"
#include "models/vocab_parallel_cross_entropy.h"
#include "models/vocab_parallel_embedding.h"
#include "models/workspace.h"
#include "sim/comm.h"

namespace lossytp {

// What one rank holds, in bytes (--dry-run and the memory check before training).
struct MemoryEstimate {
  double weights = 0, grads = 0, optimizer = 0, activations = 0;
  double total() const { return weights + grads + optimizer + activations; }
};

class GPTModel {
 public:
  // compute: where the parameters, activations and kernels live, and the GEMM precision.
  // allocate = false only lays out the parameters (ParamStore::plan) for --dry-run: nothing
  // large is allocated and the model cannot step.
  GPTModel(const ModelConfig& cfg, int tp_rank, int tp_size, TPOptions opt = {},
           Compute compute = {}, bool allocate = true);
  const ModelConfig& config() const { return cfg_; }
  ParamStore& params() { return store_; }
  void init(uint64_t seed) { store_.init(seed); }

  // One micro-batch of B sequences of T tokens (x inputs, y targets, both [B, T], in host
  // memory; copied to the device when the model lives there).
  // Returns the sum of the B*T token losses. When backward is set, gradients of
  // grad_scale * (sum of token losses) are ACCUMULATED into params().grads().
  // token_losses, when given: a host array that receives the B*T per-token losses (the
  // downstream-task evaluation, experiments/eval_task.h, sums them over a choice's tokens).
  double step(const int32_t* x, const int32_t* y, int B, int T, Comm& tp, bool backward,
              float grad_scale, float* token_losses = nullptr);
  // After the last micro-batch of an iteration: under CAAT or sequence parallelism, sums the
  // gradients of the replicated parameters that received per-rank partial gradients (norms,
  // row-parallel biases) over TP at site "replicated.grad". No-op otherwise.
  void reduce_partial_grads(Comm& tp);
  // Activation recompute (--recompute-*, models/config.h; docs/models.md). Throws
  // std::invalid_argument for a bad combination.
  void set_recompute(const RecomputeOptions& r);
  const RecomputeOptions& recompute() const { return recompute_; }

  // Estimates for B x T micro-batches: memory of this rank (AdamW's two moments), and the
  // elements each TP site all-reduces (or, sequence parallel, all-gathers / reduce-scatters)
  // per micro-batch (and "replicated.grad" per iteration).
  MemoryEstimate memory_estimate(int B, int T) const;
  SiteElements comm_elements(int B, int T) const;

 private:
  void ensure(int B, int T);
  // Block l's forward; under full recompute it records the block's collective results (record).
  void forward_block(int l, int B, int T, Comm& tp, bool record);
  bool partial_grad(const ParamSpec& s) const;
  ModelConfig cfg_;
  TPOptions opt_;
  ParamStore store_;
  VocabParallelEmbedding embed_;
  int pos_ = -1;  // learned absolute positions (-1 with RoPE)
  std::unique_ptr<RotaryEmbedding> rotary_;
  std::vector<std::unique_ptr<TransformerBlock>> blocks_;
  Norm final_norm_;
  OutputLayer output_;
  VocabParallelCrossEntropy ce_;
  Workspace ws_;
  int B_ = 0, T_ = 0;
  std::vector<Tensor> res_;  // residual stream: res_[0] embeddings, res_[l+1] block l output
  Tensor final_out_, logits_, dres_, losses_, dloss_;
  Tensor tokens_;  // the micro-batch's x then y on the device (int32 bits in fp32 storage)
  Tensor partial_pack_;
  RecomputeOptions recompute_;
  std::vector<Tensor> inner_;  // full uniform recompute: inputs of a unit's later blocks, shared by all units
  std::vector<std::unique_ptr<Workspace>> pools_;  // full recompute: saved activations, one per unit position
};

}  // namespace lossytp
