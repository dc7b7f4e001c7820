#include "models/config.h"

#include <stdexcept>

namespace lossytp {

int ModelConfig::ffn() const {
  if (ffn_hidden_size > 0) return ffn_hidden_size;
  // Megatron's default for a gated MLP keeps the parameter count of a 4h one (arguments.py).
  if (swiglu) return static_cast<int>((4.0 * hidden_size * 2.0 / 3.0) / 64) * 64;
  return 4 * hidden_size;
}

int ModelConfig::padded_vocab_size(int tp) const {
  const long long m = static_cast<long long>(make_vocab_size_divisible_by) * tp;
  return static_cast<int>((vocab_size + m - 1) / m * m);
}

long long ModelConfig::num_parameters() const {
  const long long C = hidden_size, F = ffn(), L = num_layers, H = num_attention_heads,
                  G = query_groups(), D = head_dim(), V = vocab_size;
  const long long norm = normalization == "LayerNorm" ? 2 * C : C;
  const long long b = add_bias_linear ? 1 : 0;
  const long long qkv = (H + 2 * G) * D;
  const long long fc1 = swiglu ? 2 * F : F;
  const long long per_layer = 2 * norm + qkv * C + b * qkv + C * H * D + b * C + fc1 * C + b * fc1 +
                              C * F + b * C;
  long long n = V * C + L * per_layer + norm;
  if (untie_embeddings_and_output_weights) n += V * C;
  if (!rope()) n += static_cast<long long>(seq_length) * C;
  return n;
}

double ModelConfig::flops_per_token() const {
  double n = static_cast<double>(num_parameters());
  if (!rope()) n -= static_cast<double>(seq_length) * hidden_size;
  return 6.0 * n + 12.0 * num_layers * static_cast<double>(seq_length) * hidden_size;
}

void ModelConfig::validate(int tp) const {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument(msg);
  };
  auto s = [](auto v) { return std::to_string(v); };
  need(vocab_size > 0, "--vocab-size must be > 0");
  need(seq_length > 0, "--seq-length must be > 0");
  need(num_layers > 0, "--num-layers must be > 0");
  need(hidden_size > 0, "--hidden-size must be > 0");
  need(num_attention_heads > 0, "--num-attention-heads must be > 0");
  need(hidden_size % num_attention_heads == 0,
       "--hidden-size " + s(hidden_size) + " is not divisible by --num-attention-heads " +
           s(num_attention_heads));
  need(num_attention_heads % tp == 0, "--num-attention-heads " + s(num_attention_heads) +
                                          " is not divisible by --tensor-model-parallel-size " + s(tp));
  if (group_query_attention) {
    need(num_query_groups > 0, "--num-query-groups must be > 0");
    need(num_attention_heads % num_query_groups == 0,
         "--num-query-groups " + s(num_query_groups) + " does not divide --num-attention-heads " +
             s(num_attention_heads));
    // Each rank owns whole query groups (Megatron before TP > groups sub-sharding).
    need(num_query_groups % tp == 0, "--num-query-groups " + s(num_query_groups) +
                                         " is not divisible by --tensor-model-parallel-size " + s(tp) +
                                         " (each TP rank owns whole query groups)");
  }
  need(make_vocab_size_divisible_by > 0, "--make-vocab-size-divisible-by must be > 0");
  need(ffn() > 0, "--ffn-hidden-size must be > 0");
  need(ffn() % tp == 0, "--ffn-hidden-size " + s(ffn()) + (swiglu ? " (the SwiGLU width)" : "") +
                            " is not divisible by --tensor-model-parallel-size " + s(tp));
  need(init_std > 0, "--init-method-std must be > 0");
  need(normalization == "LayerNorm" || normalization == "RMSNorm",
       "--normalization must be LayerNorm or RMSNorm, got '" + normalization + "'");
  need(norm_epsilon > 0, "--norm-epsilon must be > 0");
  need(position_embedding_type == "learned_absolute" || position_embedding_type == "rope",
       "--position-embedding-type must be learned_absolute or rope, got '" +
           position_embedding_type + "'");
  if (rope()) {
    need(rotary_percent > 0 && rotary_percent <= 1,
         "--rotary-percent must be in (0, 1], got " + s(rotary_percent));
    need(rotary_dim() >= 2 && rotary_dim() % 2 == 0,
         "--rotary-percent " + s(rotary_percent) + " gives a rotary dimension of " + s(rotary_dim()) +
             " channels of the head's " + s(head_dim()) + "; it must be even and >= 2");
    need(rotary_base > 0, "--rotary-base must be > 0");
  }
  if (use_rope_scaling) {
    need(rope(), "--use-rope-scaling needs --position-embedding-type rope");
    need(rope_scaling_factor >= 1, "--rope-scaling-factor must be >= 1, got " + s(rope_scaling_factor));
    need(rope_scaling_low_freq_factor > 0 && rope_scaling_high_freq_factor > rope_scaling_low_freq_factor,
         "--rope-scaling-high-freq-factor must exceed --rope-scaling-low-freq-factor > 0");
    need(rope_scaling_original_max_position > 0, "--rope-scaling-original-max-position must be > 0");
  }
}

namespace {

ModelConfig gpt2(int layers, int hidden, int heads) {
  ModelConfig m;
  m.vocab_size = 50257;
  m.seq_length = 1024;
  m.num_layers = layers;
  m.hidden_size = hidden;
  m.num_attention_heads = heads;
  return m;
}

ModelConfig semigroup_tiny() {
  ModelConfig m = gpt2(2, 512, 8);  // LayerNorm, learned positions, GELU MLP with biases, tied
  m.seq_length = 128;
  m.attention = "semigroup-esr";
  return m;
}

ModelConfig llama(int vocab, int seq, int layers, int hidden, int heads, int groups, int ffn,
                  double rope_base) {
  ModelConfig m;
  m.vocab_size = vocab;
  m.seq_length = seq;
  m.num_layers = layers;
  m.hidden_size = hidden;
  m.num_attention_heads = heads;
  m.group_query_attention = groups != heads;
  m.num_query_groups = groups;
  m.ffn_hidden_size = ffn;
  m.normalization = "RMSNorm";
  m.position_embedding_type = "rope";
  m.rotary_base = rope_base;
  m.swiglu = true;
  m.add_bias_linear = false;
  m.untie_embeddings_and_output_weights = true;
  return m;
}

}  // namespace

const std::vector<Preset>& presets() {
  static const std::vector<Preset> p = [] {
    ModelConfig tiny;  // the struct's defaults are gpt-tiny
    std::vector<Preset> v = {
        {"gpt-tiny", tiny, 8, "GPT-2 blocks: vocab 4096, seq 256, 4 layers, hidden 256, 4 heads"},
        {"gpt2-124m", gpt2(12, 768, 12), 8, "GPT-2 small: 12 layers, hidden 768, 12 heads, vocab 50257"},
        {"gpt2-medium", gpt2(24, 1024, 16), 4, "GPT-2 medium: 24 layers, hidden 1024, 16 heads"},
        {"gpt2-large", gpt2(36, 1280, 20), 2, "GPT-2 large: 36 layers, hidden 1280, 20 heads"},
        {"gpt2-xl", gpt2(48, 1600, 25), 1, "GPT-2 XL: 48 layers, hidden 1600, 25 heads"},
        {"llama-tiny", llama(4096, 256, 4, 256, 8, 4, 704, 10000), 8,
         "Llama blocks: vocab 4096, seq 256, 4 layers, hidden 256, 8 heads, 4 query groups, ffn 704"},
        {"llama-130m", llama(32000, 1024, 12, 768, 16, 16, 2048, 10000), 4,
         "CAAT-Net's 130M Llama: 12 layers, hidden 768, 16 heads, ffn 2048, vocab 32000"},
        {"tinyllama-1.1b", llama(32000, 2048, 22, 2048, 32, 4, 5632, 10000), 1,
         "TinyLlama 1.1B: 22 layers, hidden 2048, 32 heads, 4 query groups, ffn 5632"},
        {"llama-1b", llama(128256, 8192, 16, 2048, 32, 8, 8192, 500000), 1,
         "MagiAttention's LLaMA-1B: 16 layers, hidden 2048, 32 heads, 8 groups, ffn 8192, vocab 128256, rope base 500000"},
        // The semigroup-attention fork's smoke run (run_gpt_semigroup.sh; ../shared/semigroup-attention.md 6.1).
        {"semigroup-tiny", semigroup_tiny(), 2,
         "the semigroup fork's smoke run: 2 layers, hidden 512, 8 heads, seq 128, vocab 50257, "
         "--attention semigroup-esr; 10 iterations, lr 1e-4 cosine to 1e-5, no warmup, weight decay 0.01",
         PresetTraining{1e-4f, 1e-5f, 10, 0, 0.01f}},
    };
    return v;
  }();
  return p;
}

const Preset& find_preset(const std::string& name) {
  std::string known;
  for (const Preset& p : presets()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  throw std::invalid_argument("unknown --model preset '" + name + "' (known: " + known + ")");
}

void RecomputeOptions::validate(int layers) const {
  auto bad = [](const std::string& m) { throw std::invalid_argument(m); };
  if (!granularity.empty() && !full() && !selective())
    bad("--recompute-granularity must be full or selective, got '" + granularity + "'");
  if (!method.empty() && method != "uniform" && method != "block")
    bad("--recompute-method must be uniform or block, got '" + method + "'");
  if (full() && method.empty())
    bad("--recompute-granularity full needs --recompute-method uniform or block (as Megatron)");
  if (!full() && !method.empty())
    bad("--recompute-method " + method + " applies to --recompute-granularity full only" +
        (selective() ? " (selective recomputes every block's attention core)" : ""));
  if (full() && (num_layers < 1 || num_layers > layers))
    bad("--recompute-num-layers must be between 1 and --num-layers " + std::to_string(layers) + ", got " +
        std::to_string(num_layers));
  if (!full() && num_layers != 1)
    bad("--recompute-num-layers applies to --recompute-granularity full only");
}

int RecomputeOptions::unit_begin(int layer, int layers) const {
  if (!full() || layer < 0 || layer >= layers) return -1;
  if (method == "block") return layer < num_layers ? layer : -1;
  return layer / num_layers * num_layers;  // uniform
}

void PipelineStage::validate(int layers) const {
  if (stages < 1 || stage < 0 || stage >= stages || chunks < 1)
    throw std::invalid_argument("pipeline stage " + std::to_string(stage) + " of " + std::to_string(stages) +
                                " with " + std::to_string(chunks) + " chunks is not a stage");
  if (layers % stages != 0)
    throw std::invalid_argument("--num-layers " + std::to_string(layers) +
                                " is not divisible by --pipeline-model-parallel-size " + std::to_string(stages));
  if (layers % (stages * chunks) != 0)
    throw std::invalid_argument("--num-layers-per-virtual-pipeline-stage: " + std::to_string(layers / stages) +
                                " layers per stage do not split into " + std::to_string(chunks) + " model chunks");
}

}  // namespace lossytp
