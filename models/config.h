// The architecture of a GPT model, and the named presets. Every field can be overridden.
#pragma once
#include <string>
#include <vector>

#include "kernels/device.h"

namespace lossytp {

struct ModelConfig {
  int vocab_size = 4096;
  int seq_length = 256;
  int num_layers = 4;
  int hidden_size = 256;
  int num_attention_heads = 4;
  int ffn_hidden_size = 0;  // 0: 4 * hidden_size
  float init_std = 0.02f;

  int ffn() const { return ffn_hidden_size > 0 ? ffn_hidden_size : 4 * hidden_size; }
  int head_dim() const { return hidden_size / num_attention_heads; }
  // Parameters of the full (unsharded) model, tied embedding counted once.
  long long num_parameters() const;
  // Training FLOPs per token: 6 N (N without position embeddings) + 12 L T d (attention).
  double flops_per_token() const;
  // Throws std::invalid_argument naming the field when the shape is impossible for `tp`.
  void validate(int tp) const;
};

// How tensor-parallel layers communicate. Default: Megatron's exact scheme. caat: CAAT-Net's
// partial synchronisation (netmodels' caat:p=P): row-parallel outputs all-reduce only their
// first int(C * caat_p) channels, the rest stays each rank's partial sum scaled by sqrt(tp);
// column-parallel layers do not all-reduce input gradients; the residual-stream gradient is a
// per-rank partial sum that one all-reduce at the input of the block stack makes whole; the
// gradients of replicated LayerNorm parameters and row-parallel biases are summed over TP.
struct TPOptions {
  bool caat = false;
  double caat_p = 1.0;
  int synced_channels(int C) const { return caat ? static_cast<int>(C * caat_p) : C; }
};

// Where a model computes: its parameters, activations and kernels live on `device`. bf16: the
// GEMM operands are rounded to bf16 (products accumulate in fp32; master weights, optimizer
// state and every other op stay fp32), and collectives move bf16.
struct Compute {
  Device device = Device::CPU;
  bool bf16 = false;
};

struct Preset {
  std::string name;
  ModelConfig model;
  int micro_batch_size;
  std::string description;
};

const std::vector<Preset>& presets();
// Throws std::invalid_argument listing the known presets.
const Preset& find_preset(const std::string& name);

}  // namespace lossytp
