// The output layer: logits[N, Vp/tp] = x[N, C] @ W_shard^T, column-parallel over the (padded)
// vocabulary (copy_to_tp_region: identity forward; the input gradient all-reduced over TP at
// "head.bwd", except under CAAT where it stays a partial sum). W is the embedding table when
// tied (GPT-2), else its own "output_layer.weight" (--untie-embeddings-and-output-weights).
// Under --sequence-parallel it is a sequence-parallel column layer (as Megatron's): x is this
// rank's N/tp rows, all-gathered at "head.fwd" (and again at "head.regather.bwd" for the weight
// gradient); the input gradient is reduce-scattered at "head.bwd". The logits cover all N rows.
// Padded vocabulary ids (>= the true vocab) get logits of -1e30, so they take no part in the
// softmax: the loss, and every gradient, are exactly those of the unpadded model.
#pragma once
#include "models/config.h"
#include "models/param_store.h"
#include "models/parallel_linear.h"
#include "models/workspace.h"
#include "sim/comm.h"

namespace lossytp {

class OutputLayer {
 public:
  // tied_weight: the index of the embedding table in store, or -1 for an untied layer.
  OutputLayer(ParamStore& store, const ModelConfig& cfg, int tied_weight, TPOptions opt = {});
  int vocab_start() const { return vocab_start_; }
  int vocab_local() const { return vocab_local_; }
  void forward(float* logits, const float* x, int N, Comm& tp, Workspace& ws);
  // dW += dlogits^T x; dx = dlogits @ W_shard (overwritten), all-reduced unless `reduce` is false
  // (sequence-parallel: reduce-scattered to this rank's rows).
  void backward(float* dx, const float* dlogits, const float* x, int N, Comm& tp, bool reduce,
                Workspace& ws);
  void comm_elements(int N, bool reduce, SiteElements& e) const;

 private:
  ParamStore& store_;
  int w_, C_, vocab_start_, vocab_local_, valid_local_;  // valid: columns < the true vocab
  bool sp_;
};

}  // namespace lossytp
