// GPT-2 (pre-LN, learned positions, 4x GELU MLP, biases, tied input/output embedding), built
// from Megatron-style tensor-parallel layers. One object per rank holds that rank's shard.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "models/config.h"
#include "models/layernorm.h"
#include "models/param_store.h"
#include "models/transformer_block.h"
#include "models/vocab_parallel_cross_entropy.h"
#include "models/vocab_parallel_embedding.h"
#include "sim/comm.h"

namespace lossytp {

class GPTModel {
 public:
  // compute: where the parameters, activations and kernels live, and the GEMM precision.
  GPTModel(const ModelConfig& cfg, int tp_rank, int tp_size, TPOptions opt = {},
           Compute compute = {});
  const ModelConfig& config() const { return cfg_; }
  ParamStore& params() { return store_; }
  void init(uint64_t seed) { store_.init(seed); }

  // One micro-batch of B sequences of T tokens (x inputs, y targets, both [B, T], in host
  // memory; copied to the device when the model lives there).
  // Returns the sum of the B*T token losses. When backward is set, gradients of
  // grad_scale * (sum of token losses) are ACCUMULATED into params().grads().
  double step(const int32_t* x, const int32_t* y, int B, int T, Comm& tp, bool backward,
              float grad_scale);
  // After the last micro-batch of an iteration: under CAAT, sums the gradients of the
  // replicated parameters that received per-rank partial gradients (LayerNorms, row-parallel
  // biases) over TP at site "replicated.grad". No-op otherwise.
  void reduce_partial_grads(Comm& tp);

 private:
  void ensure(int B, int T);
  ModelConfig cfg_;
  TPOptions opt_;
  ParamStore store_;
  VocabParallelEmbedding embed_;
  int pos_;
  std::vector<std::unique_ptr<TransformerBlock>> blocks_;
  LayerNorm lnf_;
  VocabParallelCrossEntropy ce_;
  int B_ = 0, T_ = 0;
  std::vector<Tensor> res_;  // residual stream: res_[0] embeddings, res_[l+1] block l output
  Tensor lnf_out_, logits_, dres_, losses_, dloss_;
  Tensor tokens_;  // the micro-batch's x then y on the device (int32 bits in fp32 storage)
  BlockScratch scratch_;
  Tensor partial_pack_;
};

}  // namespace lossytp
