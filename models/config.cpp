#include "models/config.h"

#include <stdexcept>

namespace lossytp {

long long ModelConfig::num_parameters() const {
  const long long C = hidden_size, F = ffn(), L = num_layers;
  long long per_layer = 2 * C                 // ln1
                        + 3 * C * C + 3 * C   // qkv
                        + C * C + C           // proj
                        + 2 * C               // ln2
                        + F * C + F           // fc1
                        + C * F + C;          // fc2
  return static_cast<long long>(vocab_size) * C + static_cast<long long>(seq_length) * C +
         L * per_layer + 2 * C;
}

double ModelConfig::flops_per_token() const {
  double n = static_cast<double>(num_parameters()) - static_cast<double>(seq_length) * hidden_size;
  return 6.0 * n + 12.0 * num_layers * static_cast<double>(seq_length) * hidden_size;
}

void ModelConfig::validate(int tp) const {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument(msg);
  };
  need(vocab_size > 0, "--vocab-size must be > 0");
  need(seq_length > 0, "--seq-length must be > 0");
  need(num_layers > 0, "--num-layers must be > 0");
  need(hidden_size > 0, "--hidden-size must be > 0");
  need(num_attention_heads > 0, "--num-attention-heads must be > 0");
  need(hidden_size % num_attention_heads == 0,
       "--hidden-size " + std::to_string(hidden_size) + " is not divisible by --num-attention-heads " +
           std::to_string(num_attention_heads));
  need(num_attention_heads % tp == 0,
       "--num-attention-heads " + std::to_string(num_attention_heads) +
           " is not divisible by --tensor-model-parallel-size " + std::to_string(tp));
  need(vocab_size % tp == 0, "--vocab-size " + std::to_string(vocab_size) +
                                 " is not divisible by --tensor-model-parallel-size " +
                                 std::to_string(tp));
  need(ffn() % tp == 0, "--ffn-hidden-size " + std::to_string(ffn()) +
                            " is not divisible by --tensor-model-parallel-size " + std::to_string(tp));
  need(init_std > 0, "--init-method-std must be > 0");
}

const std::vector<Preset>& presets() {
  static const std::vector<Preset> p = {
      {"gpt-tiny", ModelConfig{4096, 256, 4, 256, 4, 0, 0.02f}, 8,
       "vocab 4096, seq 256, 4 layers, hidden 256, 4 heads"},
      {"gpt2-124m", ModelConfig{50304, 1024, 12, 768, 12, 0, 0.02f}, 8,
       "GPT-2 small: vocab 50304, seq 1024, 12 layers, hidden 768, 12 heads"},
  };
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

}  // namespace lossytp
