// The model: a vocab-parallel embedding (+ learned absolute positions unless RoPE), a stack of
// transformer blocks assembled from the layer spec (models/layer_spec.h), a final norm and the
// output layer (tied to the embedding or not), with Megatron's vocab-parallel cross-entropy.
// GPT-2 and the Llama family are this one class with different ModelConfigs, as in Megatron's
// GPTModel. One object per rank holds that rank's shard.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
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
  // pipe: the stage this rank holds (all of the model by default).
  GPTModel(const ModelConfig& cfg, int tp_rank, int tp_size, TPOptions opt = {},
           Compute compute = {}, bool allocate = true, PipelineStage pipe = {});
  const ModelConfig& config() const { return cfg_; }
  ParamStore& params() { return store_; }
  void init(uint64_t seed) { store_.init(seed); }

  // One micro-batch of B sequences of T tokens (x inputs, y targets, both [B, T], in host
  // memory; copied to the device when the model lives there).
  // Returns the sum of the B*T token losses. When backward is set, gradients of
  // grad_scale * (sum of token losses) are ACCUMULATED into params().grads().
  // token_losses, when given: a host array that receives the B*T per-token losses (the
  // downstream-task evaluation, experiments/eval_task.h, sums them over a choice's tokens).
  // The whole model only (one pipeline stage).
  double step(const int32_t* x, const int32_t* y, int B, int T, Comm& tp, bool backward,
              float grad_scale, float* token_losses = nullptr);

  // Pipeline parallelism (experiments/pipeline.h runs the schedule). One model chunk's forward
  // and backward of the micro-batch held in activation slot `slot` (a micro-batch in flight keeps
  // everything its backward needs in its slot, until that backward). Arguments as step().
  // pipe_forward: from the tokens x on the first virtual stage (kept for the embedding's
  // backward), else from `in` ([R, C]: the previous stage's output, R = residual rows); writes
  // the chunk's output to `out` unless on the last virtual stage, where the loss head runs,
  // and, with backward, its backward at once (the gradient at the chunk output stays in the
  // slot): returns the sum of the token losses there, 0 elsewhere.
  double pipe_forward(int chunk, int slot, const int32_t* x, const int32_t* y, const float* in, float* out,
                      int B, int T, Comm& tp, bool backward, float grad_scale, float* token_losses = nullptr);
  // dout: the gradient at the chunk output (from the next stage; unused on the last virtual
  // stage); writes the gradient at the chunk input to din, or on the first virtual stage
  // continues into the embeddings.
  void pipe_backward(int chunk, int slot, const float* dout, float* din, int B, int T, Comm& tp);
  const PipelineStage& pipeline() const { return pipe_; }
  // Context parallelism (models/context_parallel.h): from now on step() and pipe_*() take this
  // CP rank's rows of every sequence (T = seq_length / cp: chunks rank and 2 cp - 1 - rank), which
  // sit at their global positions (learned or RoPE), and every attention communicates over `cp`
  // with --cp-comm-type `type`. Throws std::invalid_argument for a part that cannot.
  void set_context_parallel(Comm& cp, const std::string& type);
  // Rows of the residual stream a rank holds for N tokens (sequence parallel: N / tp).
  int residual_rows(int N, int tp) const { return opt_.rows(N, tp); }
  // Index of the embedding table in params() on this stage (-1 when it holds none): the tied
  // copies of the first and last stage are summed at "pp.embed.grad".
  int embedding_weight() const { return embed_ ? embed_->weight_index() : -1; }
  bool tied_across_stages() const {
    return pipe_.stages > 1 && !cfg_.untie_embeddings_and_output_weights && (pipe_.first() || pipe_.last());
  }
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
  // in_flight: micro-batches whose activations a pipeline stage keeps at once.
  MemoryEstimate memory_estimate(int B, int T, int in_flight = 1) const;
  SiteElements comm_elements(int B, int T) const;

 private:
  void ensure(int B, int T);
  void check_shape(int B, int T) const;
  // The embeddings of the micro-batch into the residual stream's first rows (res0), and their backward.
  void embed_forward(float* res0, const int32_t* x, int B, int T, Comm& tp);
  void embed_backward(float* dres, const int32_t* x, int B, int T, Comm& tp);
  // The learned positions' forward (res0 += table rows) or, res0 null, backward (dpos += dres).
  void positions(float* res0, float* dpos, const float* dres, int B, int T);
  // Final norm, output layer and cross-entropy from the last block's output; with backward the
  // gradient at `last` replaces dres_.
  double head(const float* last, const int32_t* y, int B, int T, Comm& tp, bool backward, float grad_scale,
              float* token_losses);
  Workspace& slot_pool(int slot, int layer);  // a block's saved activations for one micro-batch in flight
  // Block l's forward; under full recompute it records the block's collective results (record).
  void forward_block(int l, int B, int T, Comm& tp, bool record);
  bool partial_grad(const ParamSpec& s) const;
  ModelConfig cfg_;
  TPOptions opt_;
  PipelineStage pipe_;
  ParamStore store_;
  std::optional<VocabParallelEmbedding> embed_;  // first stage; last stage too when tied
  int pos_ = -1;  // learned absolute positions (-1 with RoPE)
  std::unique_ptr<RotaryEmbedding> rotary_;
  std::vector<std::unique_ptr<TransformerBlock>> blocks_;  // null: a layer of another stage
  std::optional<Norm> final_norm_;  // last stage
  std::optional<OutputLayer> output_;
  VocabParallelCrossEntropy ce_;
  Workspace ws_;
  int B_ = 0, T_ = 0;
  int cp_rank_ = 0, cp_size_ = 1;
  std::vector<Tensor> res_;  // residual stream: res_[0] embeddings, res_[l+1] block l output
  Tensor final_out_, logits_, dres_, losses_, dloss_;
  Tensor tokens_;  // the micro-batch's x then y on the device (int32 bits in fp32 storage)
  Tensor partial_pack_;
  RecomputeOptions recompute_;
  std::vector<Tensor> inner_;  // full uniform recompute: inputs of a unit's later blocks, shared by all units
  std::vector<std::unique_ptr<Workspace>> pools_;  // full recompute: saved activations, one per unit position
  std::map<std::pair<int, int>, std::unique_ptr<Workspace>> slot_pools_;  // pipeline: (slot, layer)
};

}  // namespace lossytp
