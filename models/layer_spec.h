// Layer specs: a block is assembled from named parts, as Megatron-LM's layer specs assemble a
// TransformerLayer. The norms (LayerNorm | RMSNorm, models/norm.h) and the residual adds belong
// to the block; the two sublayers between them are parts chosen by name from the registries
// below: an attention (ModelConfig::attention) and an MLP (ModelConfig::mlp()). Rotary position
// embedding is applied by attentions that use it (models/rotary.h); learned absolute positions
// are added to the embeddings by the model.
//
// A part owns its parameters (declared in its ParamStore under its prefix), its forward and its
// backward (written next to each other) and its TP communication points (named as in Megatron's
// mappings.py, inside ColumnParallelLinear / RowParallelLinear). Adding an attention or an MLP
// is one file defining a factory plus one registration line in layer_spec.cpp; the block, the
// model, the trainer and the network models do not change for it.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/config.h"
#include "models/parallel_linear.h"
#include "models/param_store.h"
#include "models/rotary.h"
#include "models/workspace.h"
#include "sim/comm.h"

namespace lossytp {

// What a part is built from.
struct PartContext {
  ParamStore& store;
  const ModelConfig& cfg;
  TPOptions opt;
  int layer;
  std::string prefix;               // parameter and site names: "layer3.attn", "layer3.mlp"
  const RotaryEmbedding* rotary;    // the model's tables when cfg.rope(), else nullptr
};

// A sublayer between a norm and a residual add. x and out are [B*T, hidden], replicated over
// TP; a part may shard its work over TP but its output is complete on every rank (under CAAT:
// partially synchronised, as its row-parallel layers say). Under --sequence-parallel x, out, dx
// and dout are this rank's N/tp token rows (B and T still describe the whole micro-batch); the
// parallel linear layers gather and scatter the rows.
class BlockPart {
 public:
  virtual ~BlockPart() = default;
  // out (overwritten) = part(x). x stays valid until backward.
  virtual void forward(float* out, const float* x, int B, int T, Comm& tp, Workspace& ws) = 0;
  // dx (overwritten) = the gradient at x given dout at out; parameter gradients accumulate.
  // Under CAAT, dx is this rank's partial sum (column-parallel input gradients are not reduced).
  virtual void backward(float* dx, const float* dout, const float* x, int B, int T, Comm& tp,
                        Workspace& ws) = 0;
  // For --dry-run: floats kept from forward to backward, and the temporaries' floats, for N
  // tokens; the elements each TP site all-reduces per micro-batch.
  virtual size_t saved_floats(int N) const = 0;
  virtual size_t scratch_floats(int N) const = 0;
  virtual void comm_elements(int N, SiteElements& e) const = 0;
  // Full activation recompute: keep what forward saves for backward in `pool` (shared by the
  // blocks at the same position of their recompute units, which run forward again before their
  // backward) instead of in this part's own tensors; nullptr: own tensors. A part that ignores
  // it stays correct and keeps its memory.
  virtual void set_saved_pool(Workspace*) {}
  // Selective activation recompute: an attention keeps q, k, v and the softmax statistics but
  // not its core's output, and recomputes it in backward (no communication inside the core).
  // Parts without a core ignore it. saved_floats/scratch_floats follow it.
  virtual void set_recompute_core(bool) {}
  // Context parallelism (models/context_parallel.h): x holds this CP rank's rows of every sequence
  // (T is then the local length); an attention communicates over `cp` with --cp-comm-type `type`.
  // MLPs ignore it; an attention that cannot throws std::invalid_argument.
  virtual void set_context_parallel(Comm* cp, const std::string& type) {
    if (cp) throw std::invalid_argument("this part does not support context parallelism");
    (void)type;
  }
};

using PartFactory = std::unique_ptr<BlockPart> (*)(const PartContext&);

// Throw std::invalid_argument listing the registered names when `name` is not one.
PartFactory attention_factory(const std::string& name);
PartFactory mlp_factory(const std::string& name);
std::vector<std::string> attention_names();
std::vector<std::string> mlp_names();

}  // namespace lossytp
