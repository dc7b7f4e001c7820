// The architecture of a model, as Megatron-LM's TransformerConfig names it, and the named
// presets. Every field can be overridden by the flag of the same name (train_config.cpp).
// A model is a composition of parts chosen by these fields (models/layer_spec.h): the norm, the
// position embedding, the attention and the MLP of every block, biases, tied or untied output.
#pragma once
#include <string>
#include <vector>

#include "kernels/device.h"

namespace lossytp {

struct ModelConfig {
  int vocab_size = 4096;  // the true vocabulary: every token id is < vocab_size
  int seq_length = 256;
  int num_layers = 4;
  int hidden_size = 256;
  int num_attention_heads = 4;
  // Grouped-query attention: K/V heads (query groups). Megatron's --group-query-attention with
  // --num-query-groups; false: one group per head (MHA).
  bool group_query_attention = false;
  int num_query_groups = 1;
  int ffn_hidden_size = 0;  // 0: 4 h, or with SwiGLU Megatron's int(4h * 2/3 / 64) * 64
  float init_std = 0.02f;
  std::string normalization = "LayerNorm";  // LayerNorm | RMSNorm
  float norm_epsilon = 1e-5f;
  std::string position_embedding_type = "learned_absolute";  // learned_absolute | rope
  double rotary_base = 10000;
  double rotary_percent = 1.0;  // the first int(head_dim * percent) channels of a head rotate
  // Llama-3.x frequency scaling of RoPE (Megatron's --use-rope-scaling, Hugging Face's
  // rope_scaling {"rope_type": "llama3"}): wavelengths above original_max / low_freq_factor are
  // stretched by `factor`, those below original_max / high_freq_factor kept, the band between
  // interpolated.
  bool use_rope_scaling = false;
  double rope_scaling_factor = 8.0;
  double rope_scaling_low_freq_factor = 1.0;
  double rope_scaling_high_freq_factor = 4.0;
  int rope_scaling_original_max_position = 8192;
  std::string attention = "softmax";  // a registered attention (models/layer_spec.h)
  // --attention-pattern: the attention of layer l is attention_pattern[l % size] (the fork's
  // hybrid specs); empty: `attention` in every layer.
  std::vector<std::string> attention_pattern;
  bool swiglu = false;                // SwiGLU MLP (gated, silu) instead of GELU
  bool add_bias_linear = true;        // --disable-bias-linear sets false
  bool untie_embeddings_and_output_weights = false;
  int make_vocab_size_divisible_by = 128;

  int ffn() const;
  int head_dim() const { return hidden_size / num_attention_heads; }
  int query_groups() const { return group_query_attention ? num_query_groups : num_attention_heads; }
  bool rope() const { return position_embedding_type == "rope"; }
  int rotary_dim() const { return static_cast<int>(head_dim() * rotary_percent); }
  std::string mlp() const { return swiglu ? "swiglu" : "gelu"; }
  const std::string& attention_of(int layer) const {
    return attention_pattern.empty() ? attention : attention_pattern[layer % attention_pattern.size()];
  }
  // Megatron's padding: the embedding and output tables have this many rows, a multiple of
  // make_vocab_size_divisible_by * tp. Padded ids are never targets and are masked out of the
  // softmax, so the padding changes no loss.
  int padded_vocab_size(int tp) const;
  // Parameters of the full (unsharded) model as Hugging Face counts them: the true vocabulary,
  // a tied embedding counted once.
  long long num_parameters() const;
  // Training FLOPs per token: 6 N (N without position embeddings) + 12 L T d (attention).
  double flops_per_token() const;
  // Throws std::invalid_argument naming the flag when the shape is impossible for `tp`.
  void validate(int tp) const;
};

// How tensor-parallel layers communicate. Default: Megatron's exact scheme. caat: CAAT-Net's
// partial synchronisation (netmodels' caat:p=P): row-parallel outputs all-reduce only their
// first int(C * caat_p) channels, the rest stays each rank's partial sum scaled by sqrt(tp);
// column-parallel layers do not all-reduce input gradients; the residual-stream gradient is a
// per-rank partial sum that one all-reduce at the input of the block stack makes whole; the
// gradients of replicated parameters (norms, row-parallel biases) are summed over TP.
struct TPOptions {
  bool caat = false;
  double caat_p = 1.0;
  // Megatron's --sequence-parallel (TP > 1, not with CAAT): the residual stream, the norms and
  // the residual adds are split along the token rows (rank r holds rows [r N/tp, (r+1) N/tp) of
  // the N = B*T); column-parallel layers all-gather their input, row-parallel ones
  // reduce-scatter their output (docs/models.md).
  bool sequence_parallel = false;
  // Token rows of the residual stream this rank holds for N tokens.
  int rows(int N, int tp) const { return sequence_parallel ? N / tp : N; }
  int synced_channels(int C) const { return caat ? static_cast<int>(C * caat_p) : C; }
};

// Pipeline parallelism (--pipeline-model-parallel-size, experiments/pipeline.h): the part of the
// model one rank holds. The layers are split evenly over stages x chunks "virtual stages"; chunk c
// of stage s is virtual stage c * stages + s (Megatron's interleaved layout; chunks = 1 without
// interleaving). The first stage holds the embeddings, the last the final norm and the output
// layer (and, tied, its own copy of the embedding table, kept equal by summing the two copies'
// gradients at site "pp.embed.grad").
struct PipelineStage {
  int stage = 0, stages = 1, chunks = 1;
  bool first() const { return stage == 0; }
  bool last() const { return stage == stages - 1; }
  int layers_per_chunk(int layers) const { return layers / (stages * chunks); }
  int chunk_begin(int c, int layers) const { return (c * stages + stage) * layers_per_chunk(layers); }
  bool holds(int layer, int layers) const {
    const int per = layers_per_chunk(layers);
    return per > 0 && (layer / per) % stages == stage;
  }
  // The chunk whose forward starts from the tokens, and the one that ends in the loss.
  bool first_virtual(int c) const { return first() && c == 0; }
  bool last_virtual(int c) const { return last() && c == chunks - 1; }
  // Throws std::invalid_argument naming the flags when the layers do not divide evenly.
  void validate(int layers) const;
};

// Activation recompute, as Megatron's --recompute-granularity / --recompute-method /
// --recompute-num-layers (docs/models.md). full: whole blocks run their forward again in the
// backward from their saved inputs (uniform: the blocks in units of num_layers, only each
// unit's input kept; block: the first num_layers blocks, each from its own input, the others
// not recomputed); the recomputed forward replays the original forward's collective results
// (sim/comm.h CollectiveTape) instead of communicating. selective: the attention core (its
// output) is recomputed from the saved q, k, v. granularity "": off.
struct RecomputeOptions {
  std::string granularity;  // "", full, selective
  std::string method;       // full: uniform or block
  int num_layers = 1;
  bool full() const { return granularity == "full"; }
  bool selective() const { return granularity == "selective"; }
  // Throws std::invalid_argument naming the flag for a model of `layers` blocks.
  void validate(int layers) const;
  // Full recompute: the first block of the unit recomputed together with `layer` (layer itself
  // when it is a unit of one), or -1 when `layer` is not recomputed.
  int unit_begin(int layer, int layers) const;
};

// Where a model computes: its parameters, activations and kernels live on `device`. bf16: the
// GEMM operands are rounded to bf16 (products accumulate in fp32; master weights, optimizer
// state and every other op stay fp32), and collectives move bf16.
struct Compute {
  Device device = Device::CPU;
  bool bf16 = false;
};

// Training defaults a preset may carry (a run of record): each applies unless its flag is given.
struct PresetTraining {
  float lr = 0, min_lr = -1;  // 0 / -1: the flags' defaults
  int train_iters = 0, lr_warmup_iters = -1;
  float weight_decay = -1;
};

struct Preset {
  std::string name;
  ModelConfig model;
  int micro_batch_size;
  std::string description;
  PresetTraining training = {};
};

const std::vector<Preset>& presets();
// Throws std::invalid_argument listing the known presets.
const Preset& find_preset(const std::string& name);

}  // namespace lossytp
