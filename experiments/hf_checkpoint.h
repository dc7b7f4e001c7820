// Hugging Face checkpoints in and out: `--hf-checkpoint DIR` starts a run from a GPT2LMHeadModel or
// LlamaForCausalLM directory (config.json + model.safetensors or a sharded index), and
// `lossytp export` merges a run's per-rank checkpoint into such a directory. Formats and layouts:
// docs/finetuning.md; how lossytp's tensors relate to Hugging Face's:
//   GPT-2  Conv1D weights are [in, out] (lossytp: [out, in]); c_attn's columns are [Q | K | V],
//          lossytp's fused QKV rows are per head [q_h; k_h; v_h] (Megatron's layout).
//   Llama  q/k/v_proj become the QKV rows grouped by query group [q heads of g; k_g; v_g];
//          gate_proj/up_proj become fc1 = [gate; up]; rotate-half RoPE on both sides, so no
//          permutation.
//   Both   the vocabulary tables are padded with zero rows to the run's padded size on import
//          and cut back to the true vocabulary on export.
#pragma once
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "models/config.h"
#include "models/param_store.h"

namespace lossytp::hf {

struct HFModel {
  std::string dir;
  std::string architecture;  // "GPT2LMHeadModel" or "LlamaForCausalLM"
  ModelConfig model;         // the shape; seq_length = the model's context length
  nlohmann::json config;     // config.json as read
};

// Reads DIR/config.json. Throws std::invalid_argument naming the file and the problem: missing,
// bad JSON, an unknown architecture, or a feature lossytp does not implement (naming its key).
HFModel read_config(const std::string& dir);

// The run's model: config.json's shape, with the flags the user gave (given(flag)) that do not
// change it (--seq-length up to the context length, --make-vocab-size-divisible-by,
// --init-method-std, --attention). A given shape flag whose value differs from config.json's
// throws std::invalid_argument naming both values.
ModelConfig merge_model_config(const HFModel& hf, const ModelConfig& flags,
                               const std::function<bool(const char*)>& given);

// Checks that every tensor the model needs is in DIR's safetensors with the right shape and a
// readable dtype (before training starts). Throws std::invalid_argument naming the tensor.
void check_weights(const HFModel& hf, const ModelConfig& model);

// Overwrites every parameter of `store` (one TP rank's shard of `model`) with DIR's weights.
// Throws std::runtime_error naming the tensor or file.
void load_weights(const HFModel& hf, const ModelConfig& model, ParamStore& store);

enum class ExportDType { F32, BF16 };
// Merges the newest intact checkpoint of run_dir (any TP x DP layout; DP replica 0) into a
// Hugging Face directory out_dir: config.json, model.safetensors (__metadata__ {"format": "pt"}),
// and, when the run started from --hf-checkpoint, the tokenizer files of that directory. Throws
// std::runtime_error naming the problem; progress lines go to stdout unless quiet.
void export_run(const std::string& run_dir, const std::string& out_dir, ExportDType dtype, bool overwrite,
                bool quiet);

}  // namespace lossytp::hf
