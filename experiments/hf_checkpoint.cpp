#include "experiments/hf_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "experiments/checkpoint.h"
#include "experiments/safetensors.h"
#include "experiments/train_config.h"
#include "models/gpt.h"

namespace lossytp::hf {

namespace fs = std::filesystem;

namespace {

const char* kGPT2 = "GPT2LMHeadModel";
const char* kLlama = "LlamaForCausalLM";

// ---- config.json ------------------------------------------------------------------------------

struct ConfigReader {
  const nlohmann::json& j;
  std::string file;
  [[noreturn]] void bad(const std::string& key, const std::string& what) const {
    throw std::invalid_argument(file + ": \"" + key + "\" " + what);
  }
  bool has(const std::string& k) const { return j.contains(k) && !j[k].is_null(); }
  long long integer(const std::string& k, std::optional<long long> def = std::nullopt) const {
    if (!has(k)) {
      if (def) return *def;
      bad(k, "is missing");
    }
    const auto& v = j[k];
    if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()))
      bad(k, "must be an integer, got " + v.dump());
    const double d = v.get<double>();
    if (d < 1 || d > 2147483647.0) bad(k, "must be a positive integer, got " + v.dump());
    return static_cast<long long>(d);
  }
  double number(const std::string& k, double def) const {
    if (!has(k)) return def;
    if (!j[k].is_number()) bad(k, "must be a number, got " + j[k].dump());
    return j[k].get<double>();
  }
  bool boolean(const std::string& k, bool def) const {
    if (!has(k)) return def;
    if (!j[k].is_boolean()) bad(k, "must be true or false, got " + j[k].dump());
    return j[k].get<bool>();
  }
  std::string string(const std::string& k, const std::string& def) const {
    if (!has(k)) return def;
    if (!j[k].is_string()) bad(k, "must be a string, got " + j[k].dump());
    return j[k].get<std::string>();
  }
  // The first of several names (Hugging Face's attribute_map aliases) that is present.
  std::string alias(std::initializer_list<const char*> names) const {
    for (const char* n : names)
      if (has(n)) return n;
    return *names.begin();
  }
};

ModelConfig gpt2_config(const ConfigReader& r) {
  ModelConfig m;
  m.vocab_size = static_cast<int>(r.integer("vocab_size"));
  m.hidden_size = static_cast<int>(r.integer(r.alias({"n_embd", "hidden_size"})));
  m.num_layers = static_cast<int>(r.integer(r.alias({"n_layer", "num_hidden_layers"})));
  m.num_attention_heads = static_cast<int>(r.integer(r.alias({"n_head", "num_attention_heads"})));
  m.seq_length = static_cast<int>(r.integer(r.alias({"n_positions", "max_position_embeddings"}), 1024));
  m.ffn_hidden_size = static_cast<int>(r.integer("n_inner", 4LL * m.hidden_size));
  const std::string act = r.string("activation_function", "gelu_new");
  // lossytp's GELU is the tanh approximation; these three names are that function.
  if (act != "gelu_new" && act != "gelu_pytorch_tanh" && act != "gelu_fast")
    r.bad("activation_function", "is '" + act + "': lossytp implements GPT-2's tanh GELU (gelu_new) only");
  if (!r.boolean("scale_attn_weights", true)) r.bad("scale_attn_weights", "is false: not supported");
  if (r.boolean("scale_attn_by_inverse_layer_idx", false))
    r.bad("scale_attn_by_inverse_layer_idx", "is true: not supported");
  m.norm_epsilon = static_cast<float>(r.number("layer_norm_epsilon", 1e-5));
  m.normalization = "LayerNorm";
  m.position_embedding_type = "learned_absolute";
  m.swiglu = false;
  m.add_bias_linear = true;
  m.group_query_attention = false;
  m.num_query_groups = 1;
  m.untie_embeddings_and_output_weights = !r.boolean("tie_word_embeddings", true);
  return m;
}

ModelConfig llama_config(const ConfigReader& r) {
  ModelConfig m;
  m.vocab_size = static_cast<int>(r.integer("vocab_size"));
  m.hidden_size = static_cast<int>(r.integer("hidden_size"));
  m.num_layers = static_cast<int>(r.integer("num_hidden_layers"));
  m.num_attention_heads = static_cast<int>(r.integer("num_attention_heads"));
  const int kv = static_cast<int>(r.integer("num_key_value_heads", m.num_attention_heads));
  m.group_query_attention = kv != m.num_attention_heads;
  m.num_query_groups = m.group_query_attention ? kv : 1;
  m.ffn_hidden_size = static_cast<int>(r.integer("intermediate_size"));
  m.seq_length = static_cast<int>(r.integer("max_position_embeddings", 2048));
  if (m.hidden_size % m.num_attention_heads != 0)
    r.bad("hidden_size", "is not a multiple of num_attention_heads");
  if (r.has("head_dim") && r.integer("head_dim") != m.hidden_size / m.num_attention_heads)
    r.bad("head_dim", "is " + std::to_string(r.integer("head_dim")) +
                          ", not hidden_size / num_attention_heads: lossytp does not support it");
  const std::string act = r.string("hidden_act", "silu");
  if (act != "silu") r.bad("hidden_act", "is '" + act + "': lossytp's SwiGLU uses silu");
  const bool attn_bias = r.boolean("attention_bias", false), mlp_bias = r.boolean("mlp_bias", false);
  if (attn_bias != mlp_bias)
    r.bad("attention_bias", "differs from mlp_bias: lossytp has biases in all linear layers or in none");
  m.add_bias_linear = attn_bias;
  m.norm_epsilon = static_cast<float>(r.number("rms_norm_eps", 1e-6));
  m.normalization = "RMSNorm";
  m.position_embedding_type = "rope";
  m.swiglu = true;
  m.untie_embeddings_and_output_weights = !r.boolean("tie_word_embeddings", false);
  // RoPE: transformers v4 has rope_theta + rope_scaling, v5 rope_parameters.
  m.rotary_base = r.number("rope_theta", 10000.0);
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!r.has(key)) continue;
    const auto& p = r.j[key];
    if (!p.is_object()) r.bad(key, "must be an object");
    const ConfigReader pr{p, r.file + " " + key};
    const std::string type = pr.string(pr.alias({"rope_type", "type"}), "default");
    if (type == "llama3") {
      m.use_rope_scaling = true;
      m.rope_scaling_factor = pr.number("factor", 8.0);
      m.rope_scaling_low_freq_factor = pr.number("low_freq_factor", 1.0);
      m.rope_scaling_high_freq_factor = pr.number("high_freq_factor", 4.0);
      m.rope_scaling_original_max_position = static_cast<int>(pr.integer("original_max_position_embeddings", 8192));
    } else if (type != "default") {
      r.bad(key, "has rope_type '" + type + "': lossytp implements unscaled RoPE and Llama 3's (llama3) only");
    }
    if (pr.has("rope_theta")) m.rotary_base = pr.number("rope_theta", m.rotary_base);
    if (pr.has("partial_rotary_factor") && pr.number("partial_rotary_factor", 1.0) != 1.0)
      r.bad(key, "has partial_rotary_factor != 1: not supported for Llama");
  }
  if (r.has("partial_rotary_factor") && r.number("partial_rotary_factor", 1.0) != 1.0)
    r.bad("partial_rotary_factor", "is not 1: not supported for Llama");
  return m;
}

// ---- tensor names and layouts -------------------------------------------------------------------

// What the run's parameters are called in a Hugging Face file, and how they are laid out.
struct Names {
  std::string arch;
  std::string prefix;  // GPT-2: "transformer." or "" (files saved from the base model)
  const ModelConfig& m;

  std::string layer(int l) const {
    return arch == kGPT2 ? prefix + "h." + std::to_string(l) + "." : "model.layers." + std::to_string(l) + ".";
  }
  std::string embed() const { return arch == kGPT2 ? prefix + "wte.weight" : "model.embed_tokens.weight"; }
  std::string final_norm(const std::string& wb) const {
    return arch == kGPT2 ? prefix + "ln_f." + wb : "model.norm." + wb;
  }

  // Every Hugging Face tensor the model has, with its shape.
  std::map<std::string, std::vector<int64_t>> tensors() const {
    const int64_t C = m.hidden_size, V = m.vocab_size, F = m.ffn(), hd = m.head_dim();
    const int64_t np = m.num_attention_heads, ng = m.query_groups();
    std::map<std::string, std::vector<int64_t>> t;
    t[embed()] = {V, C};
    t[final_norm("weight")] = {C};
    if (m.untie_embeddings_and_output_weights) t["lm_head.weight"] = {V, C};
    const bool bias = m.add_bias_linear;
    if (arch == kGPT2) {
      t[prefix + "wpe.weight"] = {m.seq_length, C};
      t[final_norm("bias")] = {C};
      for (int l = 0; l < m.num_layers; ++l) {
        const std::string p = layer(l);
        for (const char* ln : {"ln_1.", "ln_2."}) t[p + ln + "weight"] = t[p + ln + "bias"] = {C};
        t[p + "attn.c_attn.weight"] = {C, 3 * C};
        t[p + "attn.c_attn.bias"] = {3 * C};
        t[p + "attn.c_proj.weight"] = {C, C};
        t[p + "attn.c_proj.bias"] = {C};
        t[p + "mlp.c_fc.weight"] = {C, F};
        t[p + "mlp.c_fc.bias"] = {F};
        t[p + "mlp.c_proj.weight"] = {F, C};
        t[p + "mlp.c_proj.bias"] = {C};
      }
    } else {
      for (int l = 0; l < m.num_layers; ++l) {
        const std::string p = layer(l);
        t[p + "input_layernorm.weight"] = t[p + "post_attention_layernorm.weight"] = {C};
        t[p + "self_attn.q_proj.weight"] = {np * hd, C};
        t[p + "self_attn.k_proj.weight"] = t[p + "self_attn.v_proj.weight"] = {ng * hd, C};
        t[p + "self_attn.o_proj.weight"] = {C, np * hd};
        t[p + "mlp.gate_proj.weight"] = t[p + "mlp.up_proj.weight"] = {F, C};
        t[p + "mlp.down_proj.weight"] = {C, F};
        if (bias) {
          t[p + "self_attn.q_proj.bias"] = {np * hd};
          t[p + "self_attn.k_proj.bias"] = t[p + "self_attn.v_proj.bias"] = {ng * hd};
          t[p + "self_attn.o_proj.bias"] = {C};
          t[p + "mlp.gate_proj.bias"] = t[p + "mlp.up_proj.bias"] = {F};
          t[p + "mlp.down_proj.bias"] = {C};
        }
      }
    }
    return t;
  }

  // Tensors some files carry that the model does not use (buffers, or a tied head saved twice).
  bool ignorable(const std::string& n) const {
    auto ends = [&](const std::string& s) { return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0; };
    if (arch == kGPT2) return ends(".attn.bias") || ends(".attn.masked_bias") || n == "lm_head.weight";
    return ends(".rotary_emb.inv_freq") || n == "lm_head.weight";
  }
};

// Row r of lossytp's fused QKV weight: which of q (0), k (1), v (2) and its row there. Rows are
// grouped by query group: the group's np/ng query heads, then its k head, then its v head.
std::pair<int, int64_t> qkv_source(const ModelConfig& m, int64_t r) {
  const int64_t hd = m.head_dim(), qpg = m.num_attention_heads / m.query_groups();
  const int64_t g = r / ((qpg + 2) * hd), j = (r / hd) % (qpg + 2), d = r % hd;
  if (j < qpg) return {0, (g * qpg + j) * hd + d};
  return {j == qpg ? 1 : 2, g * hd + d};
}

std::vector<float> transpose(const std::vector<float>& a, int64_t rows, int64_t cols) {
  std::vector<float> t(a.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t[static_cast<size_t>(j * rows + i)] = a[static_cast<size_t>(i * cols + j)];
  return t;
}

// lossytp's parameter name "layer12.attn.qkv.weight" -> (12, "attn.qkv.weight"); (-1, name) else.
std::pair<int, std::string> split_layer(const std::string& name) {
  if (name.rfind("layer", 0) != 0) return {-1, name};
  const size_t dot = name.find('.');
  return {std::stoi(name.substr(5, dot - 5)), name.substr(dot + 1)};
}

using Reader = std::function<std::vector<float>(const std::string&)>;
using Writer = std::function<void(const std::string&, std::vector<int64_t>, std::vector<float>)>;

// The full (unsharded) lossytp tensor `s` from the Hugging Face tensors.
std::vector<float> to_lossytp(const Names& nm, const ParamSpec& s, const Reader& read) {
  const ModelConfig& m = nm.m;
  const int64_t C = m.hidden_size, F = m.ffn();
  size_t numel = 1;
  for (int64_t d : s.full) numel *= static_cast<size_t>(d);
  std::vector<float> out(numel, 0.0f);
  auto padded_rows = [&](const std::string& hf_name) {  // [V, C] into [Vp, C], zero rows after V
    const std::vector<float> t = read(hf_name);
    std::copy(t.begin(), t.end(), out.begin());
  };
  const bool gpt2 = nm.arch == kGPT2;
  const auto [l, part] = split_layer(s.name);
  if (s.name == "embed.weight") padded_rows(nm.embed());
  else if (s.name == "output_layer.weight") padded_rows("lm_head.weight");
  else if (s.name == "pos.weight") {
    const std::vector<float> t = read(nm.prefix + "wpe.weight");
    std::copy(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(numel), out.begin());
  } else if (s.name == "lnf.weight" || s.name == "lnf.bias") out = read(nm.final_norm(s.name.substr(4)));
  else if (l < 0) throw std::logic_error("no Hugging Face name for parameter " + s.name);
  else {
    const std::string p = nm.layer(l);
    const bool w = part.size() > 7 && part.compare(part.size() - 7, 7, ".weight") == 0;
    const std::string wb = w ? "weight" : "bias";
    if (part == "ln1." + wb) out = read(p + (gpt2 ? "ln_1." : "input_layernorm.") + wb);
    else if (part == "ln2." + wb) out = read(p + (gpt2 ? "ln_2." : "post_attention_layernorm.") + wb);
    else if (part == "attn.qkv." + wb) {
      const int64_t rows = s.full[0], cols = w ? C : 1;
      std::vector<float> src[3];
      if (gpt2) {  // c_attn: Conv1D [C, 3C]; as [3C, C] its rows are [Q; K; V]
        std::vector<float> t = read(p + "attn.c_attn." + wb);
        if (w) t = transpose(t, C, 3 * C);
        for (int k = 0; k < 3; ++k)
          src[k].assign(t.begin() + static_cast<std::ptrdiff_t>(k * C * cols), t.begin() + static_cast<std::ptrdiff_t>((k + 1) * C * cols));
      } else {
        src[0] = read(p + "self_attn.q_proj." + wb);
        src[1] = read(p + "self_attn.k_proj." + wb);
        src[2] = read(p + "self_attn.v_proj." + wb);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const auto [k, row] = qkv_source(m, r);
        std::copy_n(src[k].begin() + static_cast<std::ptrdiff_t>(row * cols), cols, out.begin() + static_cast<std::ptrdiff_t>(r * cols));
      }
    } else if (part == "attn.proj." + wb) {
      if (gpt2) out = w ? transpose(read(p + "attn.c_proj.weight"), C, C) : read(p + "attn.c_proj.bias");
      else out = read(p + "self_attn.o_proj." + wb);
    } else if (part == "mlp.fc1." + wb) {
      if (gpt2) out = w ? transpose(read(p + "mlp.c_fc.weight"), C, F) : read(p + "mlp.c_fc.bias");
      else {  // [gate; up]
        const std::vector<float> g = read(p + "mlp.gate_proj." + wb), u = read(p + "mlp.up_proj." + wb);
        std::copy(g.begin(), g.end(), out.begin());
        std::copy(u.begin(), u.end(), out.begin() + static_cast<std::ptrdiff_t>(g.size()));
      }
    } else if (part == "mlp.fc2." + wb) {
      if (gpt2) out = w ? transpose(read(p + "mlp.c_proj.weight"), F, C) : read(p + "mlp.c_proj.bias");
      else out = read(p + "mlp.down_proj." + wb);
    } else {
      throw std::logic_error("no Hugging Face name for parameter " + s.name);
    }
  }
  if (out.size() != numel)
    throw std::logic_error("Hugging Face tensors for " + s.name + " hold " + std::to_string(out.size()) +
                           " values, the parameter " + std::to_string(numel));
  return out;
}

// The inverse: the Hugging Face tensors of the full lossytp tensor `full` of parameter `s`.
void to_hf(const Names& nm, const ParamSpec& s, const std::vector<float>& full, const Writer& write) {
  const ModelConfig& m = nm.m;
  const int64_t C = m.hidden_size, F = m.ffn(), V = m.vocab_size;
  const bool gpt2 = nm.arch == kGPT2;
  auto first = [&](int64_t n) { return std::vector<float>(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n)); };
  const auto [l, part] = split_layer(s.name);
  if (s.name == "embed.weight") write(nm.embed(), {V, C}, first(V * C));
  else if (s.name == "output_layer.weight") write("lm_head.weight", {V, C}, first(V * C));
  else if (s.name == "pos.weight") write(nm.prefix + "wpe.weight", {m.seq_length, C}, full);
  else if (s.name == "lnf.weight" || s.name == "lnf.bias") write(nm.final_norm(s.name.substr(4)), {C}, full);
  else if (l < 0) throw std::runtime_error("parameter " + s.name + " has no Hugging Face equivalent");
  else {
    const std::string p = nm.layer(l);
    const bool w = part.size() > 7 && part.compare(part.size() - 7, 7, ".weight") == 0;
    const std::string wb = w ? "weight" : "bias";
    if (part == "ln1." + wb) write(p + (gpt2 ? "ln_1." : "input_layernorm.") + wb, {C}, full);
    else if (part == "ln2." + wb) write(p + (gpt2 ? "ln_2." : "post_attention_layernorm.") + wb, {C}, full);
    else if (part == "attn.qkv." + wb) {
      const int64_t rows = s.full[0], cols = w ? C : 1;
      const int64_t hd = m.head_dim(), qrows = m.num_attention_heads * hd, kvrows = m.query_groups() * hd;
      std::vector<float> dst[3] = {std::vector<float>(qrows * cols), std::vector<float>(kvrows * cols),
                                   std::vector<float>(kvrows * cols)};
      for (int64_t r = 0; r < rows; ++r) {
        const auto [k, row] = qkv_source(m, r);
        std::copy_n(full.begin() + static_cast<std::ptrdiff_t>(r * cols), cols, dst[k].begin() + static_cast<std::ptrdiff_t>(row * cols));
      }
      if (gpt2) {
        std::vector<float> t;
        for (auto& d : dst) t.insert(t.end(), d.begin(), d.end());
        if (w) write(p + "attn.c_attn.weight", {C, 3 * C}, transpose(t, 3 * C, C));
        else write(p + "attn.c_attn.bias", {3 * C}, t);
      } else {
        const char* names[3] = {"q_proj.", "k_proj.", "v_proj."};
        for (int k = 0; k < 3; ++k) {
          const int64_t r = k == 0 ? qrows : kvrows;
          write(p + "self_attn." + names[k] + wb, w ? std::vector<int64_t>{r, C} : std::vector<int64_t>{r}, dst[k]);
        }
      }
    } else if (part == "attn.proj." + wb) {
      if (gpt2) {
        if (w) write(p + "attn.c_proj.weight", {C, C}, transpose(full, C, C));
        else write(p + "attn.c_proj.bias", {C}, full);
      } else {
        write(p + "self_attn.o_proj." + wb, s.full, full);
      }
    } else if (part == "mlp.fc1." + wb) {
      if (gpt2) {
        if (w) write(p + "mlp.c_fc.weight", {C, F}, transpose(full, F, C));
        else write(p + "mlp.c_fc.bias", {F}, full);
      } else {
        const std::vector<int64_t> shape = w ? std::vector<int64_t>{F, C} : std::vector<int64_t>{F};
        const size_t half = full.size() / 2;
        write(p + "mlp.gate_proj." + wb, shape, std::vector<float>(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(half)));
        write(p + "mlp.up_proj." + wb, shape, std::vector<float>(full.begin() + static_cast<std::ptrdiff_t>(half), full.end()));
      }
    } else if (part == "mlp.fc2." + wb) {
      if (gpt2) {
        if (w) write(p + "mlp.c_proj.weight", {F, C}, transpose(full, C, F));
        else write(p + "mlp.c_proj.bias", {C}, full);
      } else {
        write(p + "mlp.down_proj." + wb, s.full, full);
      }
    } else {
      throw std::runtime_error("parameter " + s.name + " has no Hugging Face equivalent");
    }
  }
}

std::string gpt2_prefix(const safetensors::Checkpoint& ck) {
  return ck.has("transformer.wte.weight") || !ck.has("wte.weight") ? "transformer." : "";
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// The architecture a run's model has in Hugging Face, or a reason why it has none.
std::string architecture_of(const ModelConfig& m, std::string* why) {
  const bool gpt2 = m.normalization == "LayerNorm" && !m.rope() && !m.swiglu && m.add_bias_linear &&
                    !m.group_query_attention;
  const bool llama = m.normalization == "RMSNorm" && m.rope() && m.swiglu && m.rotary_percent == 1.0;
  for (int l = 0; l < std::max(m.num_layers, 1); ++l)
    if (m.attention_of(l) != "softmax") {
      *why = "its attention '" + m.attention_of(l) + "' has no Hugging Face equivalent";
      return "";
    }
  if (gpt2) return kGPT2;
  if (llama) return kLlama;
  *why = "its blocks (" + m.normalization + ", " + m.position_embedding_type + ", " + m.mlp() +
         (m.add_bias_linear ? ", biases" : ", no biases") +
         ") are neither GPT-2's (LayerNorm, learned_absolute, gelu, biases, multi-head) nor Llama's "
         "(RMSNorm, rope on every channel, swiglu)";
  return "";
}

void write_text_atomic(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream o(tmp, std::ios::binary);
    o << text;
    o.flush();
    if (!o) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw std::runtime_error("cannot write " + path.string());
    }
  }
  fs::rename(tmp, path);
}

}  // namespace

HFModel read_config(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw std::invalid_argument("--hf-checkpoint " + dir + ": not a directory (a Hugging Face model folder with config.json and model.safetensors)");
  const fs::path cfg_path = fs::path(dir) / "config.json";
  std::ifstream in(cfg_path);
  if (!in) throw std::invalid_argument("--hf-checkpoint " + dir + ": config.json is missing");
  HFModel h;
  h.dir = dir;
  try {
    h.config = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw std::invalid_argument(cfg_path.string() + ": not valid JSON (" + e.what() + ")");
  }
  if (!h.config.is_object()) throw std::invalid_argument(cfg_path.string() + ": not a JSON object");
  const ConfigReader r{h.config, cfg_path.string()};
  std::string arch;
  if (r.has("architectures")) {
    const auto& a = h.config["architectures"];
    if (!a.is_array() || a.empty() || !a[0].is_string()) r.bad("architectures", "must be a list of names");
    arch = a[0].get<std::string>();
  } else {
    const std::string type = r.string("model_type", "");
    arch = type == "gpt2" ? kGPT2 : type == "llama" ? kLlama : "model_type '" + type + "'";
  }
  if (arch != kGPT2 && arch != kLlama)
    throw std::invalid_argument(cfg_path.string() + ": architecture " + arch +
                                " is not supported (lossytp imports GPT2LMHeadModel and LlamaForCausalLM)");
  h.architecture = arch;
  h.model = arch == kGPT2 ? gpt2_config(r) : llama_config(r);
  return h;
}

ModelConfig merge_model_config(const HFModel& hf, const ModelConfig& f,
                               const std::function<bool(const char*)>& given) {
  ModelConfig m = hf.model;
  const std::string src = (fs::path(hf.dir) / "config.json").string();
  auto clash = [&](const char* flag, const std::string& mine, const std::string& theirs) {
    throw std::invalid_argument(std::string(flag) + " " + mine + " contradicts " + src + ", which has " + theirs +
                                " (with --hf-checkpoint the model's shape comes from config.json: drop the flag)");
  };
  auto num = [](double v) {
    std::ostringstream o;
    o << v;
    return o.str();
  };
  auto check_int = [&](const char* flag, int mine, int theirs) {
    if (given(flag) && mine != theirs) clash(flag, std::to_string(mine), std::to_string(theirs));
  };
  auto check_bool = [&](const char* flag, bool mine, bool theirs) {
    if (given(flag) && mine != theirs) clash(flag, mine ? "(on)" : "(off)", theirs ? "it on" : "it off");
  };
  auto check_str = [&](const char* flag, const std::string& mine, const std::string& theirs) {
    if (given(flag) && mine != theirs) clash(flag, mine, theirs);
  };
  auto check_real = [&](const char* flag, double mine, double theirs) {
    if (given(flag) && std::abs(mine - theirs) > 1e-6 * std::abs(theirs)) clash(flag, num(mine), num(theirs));
  };
  check_int("--vocab-size", f.vocab_size, m.vocab_size);
  check_int("--num-layers", f.num_layers, m.num_layers);
  check_int("--hidden-size", f.hidden_size, m.hidden_size);
  check_int("--num-attention-heads", f.num_attention_heads, m.num_attention_heads);
  check_int("--ffn-hidden-size", f.ffn(), m.ffn());
  check_bool("--group-query-attention", f.group_query_attention, m.group_query_attention);
  check_int("--num-query-groups", f.query_groups(), m.query_groups());
  check_str("--normalization", f.normalization, m.normalization);
  check_real("--norm-epsilon", f.norm_epsilon, m.norm_epsilon);
  check_str("--position-embedding-type", f.position_embedding_type, m.position_embedding_type);
  check_real("--rotary-base", f.rotary_base, m.rotary_base);
  check_real("--rotary-percent", f.rotary_percent, m.rotary_percent);
  check_bool("--swiglu", f.swiglu, m.swiglu);
  check_bool("--use-rope-scaling", f.use_rope_scaling, m.use_rope_scaling);
  check_real("--rope-scaling-factor", f.rope_scaling_factor, m.rope_scaling_factor);
  check_real("--rope-scaling-low-freq-factor", f.rope_scaling_low_freq_factor, m.rope_scaling_low_freq_factor);
  check_real("--rope-scaling-high-freq-factor", f.rope_scaling_high_freq_factor, m.rope_scaling_high_freq_factor);
  check_int("--rope-scaling-original-max-position", f.rope_scaling_original_max_position,
            m.rope_scaling_original_max_position);
  check_bool("--disable-bias-linear", !f.add_bias_linear, !m.add_bias_linear);
  check_bool("--untie-embeddings-and-output-weights", f.untie_embeddings_and_output_weights,
             m.untie_embeddings_and_output_weights);
  // What the user may choose: the training sequence length (GPT-2: at most its position table),
  // the vocabulary padding, the init std (unused), the attention part.
  const int context = m.seq_length;
  if (given("--seq-length")) {
    if (!m.rope() && f.seq_length > context)
      throw std::invalid_argument("--seq-length " + std::to_string(f.seq_length) + " is longer than the " +
                                  std::to_string(context) + " learned positions of " + src);
    m.seq_length = f.seq_length;
  } else {
    m.seq_length = std::min(context, 2048);
  }
  if (given("--make-vocab-size-divisible-by")) m.make_vocab_size_divisible_by = f.make_vocab_size_divisible_by;
  if (given("--init-method-std")) m.init_std = f.init_std;
  if (given("--attention")) m.attention = f.attention;
  return m;
}

void check_weights(const HFModel& hf, const ModelConfig& model) {
  try {
    const safetensors::Checkpoint ck(hf.dir);
    HFModel h = hf;
    h.model = model;
    h.model.seq_length = hf.model.seq_length;  // the file's position table: its full context
    const Names nm{hf.architecture, hf.architecture == kGPT2 ? gpt2_prefix(ck) : "", h.model};
    const auto want = nm.tensors();
    for (const auto& [name, shape] : want) {
      if (!ck.has(name)) {
        std::string alt = hf.architecture == kGPT2 ? (nm.prefix.empty() ? "transformer." + name : name.substr(12)) : "";
        throw std::invalid_argument("tensor " + name + " is missing" +
                                    (alt.empty() ? "" : " (nor is there " + alt + ")"));
      }
      const auto& info = ck.info(name);
      if (info.shape != shape)
        throw std::invalid_argument("tensor " + name + " has shape " + shape_text(info.shape) + ", config.json implies " +
                                    shape_text(shape));
      if (info.dtype != "F32" && info.dtype != "F16" && info.dtype != "BF16" && info.dtype != "F64")
        throw std::invalid_argument("tensor " + name + " has dtype " + info.dtype + " (lossytp reads F32, F16, BF16, F64)");
    }
    for (const std::string& name : ck.names())
      if (!want.count(name) && !nm.ignorable(name))
        throw std::invalid_argument("tensor " + name + " is not part of a " + hf.architecture +
                                    " of config.json's shape (a different model's file?)");
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("--hf-checkpoint " + hf.dir + ": " + e.what());
  } catch (const std::runtime_error& e) {  // safetensors: a damaged file
    throw std::invalid_argument("--hf-checkpoint " + hf.dir + ": " + e.what());
  }
}

void load_weights(const HFModel& hf, const ModelConfig& model, ParamStore& store) {
  const safetensors::Checkpoint ck(hf.dir);
  const Names nm{hf.architecture, hf.architecture == kGPT2 ? gpt2_prefix(ck) : "", model};
  // Each tensor is read at most once per parameter (c_attn's columns feed one QKV parameter).
  const Reader read = [&](const std::string& name) { return ck.read_float(name); };
  Tensor host = store.device() == Device::CPU ? store.values() : Tensor({static_cast<int64_t>(store.numel())});
  for (const ParamSpec& s : store.specs()) {
    const std::vector<float> full = to_lossytp(nm, s, read);
    copy_shard(s, store.tp_rank(), store.tp_size(), full.data(), host.data() + s.offset);
  }
  if (store.device() != Device::CPU) store.values().copy_from_host(host.data());
}

void export_run(const std::string& run_dir, const std::string& out_dir, ExportDType dtype, bool overwrite,
                bool quiet) {
  // The run's configuration, as its checkpoints store it.
  const std::string text = checkpoint_config(run_dir);
  if (text.empty())
    throw std::runtime_error("--load " + run_dir + ": no checkpoint there (runs write them with --save-interval N)");
  nlohmann::json saved;
  try {
    saved = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw std::runtime_error("--load " + run_dir + ": the checkpoint's config.json is not valid JSON (" + e.what() + ")");
  }
  ModelConfig m;
  auto get = [&](const char* k, auto def) { return saved.contains(k) ? saved[k].get<decltype(def)>() : def; };
  int tp = 1, dp = 1, pp = 1, vp_layers = 0, cp = 1;
  try {
    m.vocab_size = get("vocab-size", m.vocab_size);
    m.seq_length = get("seq-length", m.seq_length);
    m.num_layers = get("num-layers", m.num_layers);
    m.hidden_size = get("hidden-size", m.hidden_size);
    m.num_attention_heads = get("num-attention-heads", m.num_attention_heads);
    m.ffn_hidden_size = get("ffn-hidden-size", 0);
    m.group_query_attention = get("group-query-attention", false);
    m.num_query_groups = get("num-query-groups", 1);
    m.normalization = get("normalization", std::string("LayerNorm"));
    m.norm_epsilon = get("norm-epsilon", 1e-5f);
    m.position_embedding_type = get("position-embedding-type", std::string("learned_absolute"));
    m.rotary_base = get("rotary-base", 10000.0);
    m.rotary_percent = get("rotary-percent", 1.0);
    m.use_rope_scaling = get("use-rope-scaling", false);
    m.rope_scaling_factor = get("rope-scaling-factor", 8.0);
    m.rope_scaling_low_freq_factor = get("rope-scaling-low-freq-factor", 1.0);
    m.rope_scaling_high_freq_factor = get("rope-scaling-high-freq-factor", 4.0);
    m.rope_scaling_original_max_position = get("rope-scaling-original-max-position", 8192);
    m.attention = get("attention", std::string("softmax"));
    for (std::string rest = get("attention-pattern", std::string()); !rest.empty();) {  // "a,b,c"
      const size_t comma = rest.find(',');
      m.attention_pattern.push_back(rest.substr(0, comma));
      rest = comma == std::string::npos ? "" : rest.substr(comma + 1);
    }
    m.swiglu = get("swiglu", false);
    m.add_bias_linear = !get("disable-bias-linear", false);
    m.untie_embeddings_and_output_weights = get("untie-embeddings-and-output-weights", false);
    m.make_vocab_size_divisible_by = get("make-vocab-size-divisible-by", 128);
    tp = get("tensor-model-parallel-size", 1);
    dp = get("data-parallel-size", 1);
    pp = get("pipeline-model-parallel-size", 1);
    cp = get("context-parallel-size", 1);
    vp_layers = get("num-layers-per-virtual-pipeline-stage", 0);
  } catch (const std::exception& e) {
    throw std::runtime_error("--load " + run_dir + ": the checkpoint's config.json is not a lossytp run's (" + e.what() + ")");
  }
  std::string why;
  const std::string arch = architecture_of(m, &why);
  if (arch.empty()) throw std::runtime_error("--load " + run_dir + ": the run's model cannot be exported: " + why);

  const ResumePoint rp = find_resume_point(run_dir, tp * cp * dp * pp);
  if (rp.iteration < 0) {
    std::string p;
    for (const auto& s : rp.problems) p += (p.empty() ? "" : "; ") + s;
    throw std::runtime_error("--load " + run_dir + ": no intact checkpoint: " + p);
  }
  if (!quiet) {
    for (const auto& s : rp.problems) std::printf("warning: %s\n", s.c_str());
    std::printf("export: %s, checkpoint of iteration %lld (tp %d, dp %d, pp %d: replica 0) -> %s as %s (%s)\n",
                run_dir.c_str(), static_cast<long long>(rp.iteration), tp, dp, pp, out_dir.c_str(), arch.c_str(),
                dtype == ExportDType::BF16 ? "bf16" : "fp32");
    std::fflush(stdout);
  }

  // Output folder: refuse to overwrite a model unless asked, before anything is read.
  std::error_code ec;
  const fs::path out(out_dir);
  if (fs::exists(out, ec) && !fs::is_directory(out, ec)) throw std::runtime_error("--hf " + out_dir + " exists and is not a directory");
  if (!overwrite && (fs::exists(out / "model.safetensors", ec) || fs::exists(out / "config.json", ec)))
    throw std::runtime_error("--hf " + out_dir + " already holds a model; choose another folder or pass --overwrite");

  // Every TP rank's shard of every pipeline stage (DP replica 0, CP rank 0),
  // placed into the full tensors. A stage's copy of the tied embedding is the first stage's.
  const Names nm{arch, "transformer.", m};
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> tensors;
  const Writer put = [&](const std::string& name, std::vector<int64_t> shape, std::vector<float> v) {
    tensors[name] = {std::move(shape), std::move(v)};
  };
  const int chunks = vp_layers > 0 && pp > 1 ? m.num_layers / (pp * vp_layers) : 1;
  std::vector<std::vector<float>> arenas(static_cast<size_t>(tp));
  for (int stage = 0; stage < pp; ++stage) {
    std::vector<std::unique_ptr<GPTModel>> layouts;
    for (int r = 0; r < tp; ++r) {
      const int rank = r + tp * cp * dp * stage;  // CP and DP rank 0
      int file_tp_rank = -1, file_tp = -1;
      arenas[r] = read_checkpoint_values(run_dir, rank, rp.iteration, &file_tp_rank, &file_tp);
      layouts.push_back(std::make_unique<GPTModel>(m, r, tp, TPOptions{}, Compute{}, false,
                                                   PipelineStage{stage, pp, chunks}));
      if (file_tp_rank != r || file_tp != tp || arenas[r].size() != layouts.back()->params().numel())
        throw std::runtime_error("checkpoint file " + checkpoint_file(run_dir, rank, rp.iteration) +
                                 " does not hold TP rank " + std::to_string(r) + " of " + std::to_string(tp) +
                                 (pp > 1 ? " of pipeline stage " + std::to_string(stage) : "") +
                                 " of the model its config.json describes");
    }
    const auto& specs0 = layouts[0]->params().specs();
    for (size_t i = 0; i < specs0.size(); ++i) {
      if (specs0[i].pipeline_copy) continue;
      size_t numel = 1;
      for (int64_t d : specs0[i].full) numel *= static_cast<size_t>(d);
      std::vector<float> full(numel);
      for (int r = 0; r < tp; ++r) {
        const ParamSpec& s = layouts[r]->params().spec(static_cast<int>(i));
        place_shard(s, r, tp, arenas[r].data() + s.offset, full.data());
      }
      to_hf(nm, specs0[i], full, put);
    }
  }
  arenas.clear();
  const auto want = nm.tensors();
  for (const auto& [name, shape] : want)
    if (!tensors.count(name) || tensors[name].first != shape)
      throw std::logic_error("export: tensor " + name + " was not produced with shape " + shape_text(shape));

  fs::create_directories(out, ec);
  if (ec) throw std::runtime_error("cannot create --hf " + out_dir + ": " + ec.message());
  std::vector<safetensors::NamedTensor> named;
  for (const auto& [name, t] : tensors) named.push_back({name, t.first, t.second.data()});
  safetensors::write_file((out / "model.safetensors").string(), named,
                          dtype == ExportDType::BF16 ? safetensors::DType::BF16 : safetensors::DType::F32,
                          {{"format", "pt"}});

  // config.json: the source model's (token ids, tokenizer settings) when the run started from
  // one, with this model's shape.
  nlohmann::json cfg = nlohmann::json::object();
  const std::string source = saved.value("hf-checkpoint", std::string());
  if (!source.empty()) {
    std::ifstream in(fs::path(source) / "config.json");
    if (in) {
      try {
        cfg = nlohmann::json::parse(in);
      } catch (const std::exception&) {
        cfg = nlohmann::json::object();
      }
    }
  }
  if (!cfg.is_object()) cfg = nlohmann::json::object();
  cfg["architectures"] = {arch};
  cfg["vocab_size"] = m.vocab_size;
  cfg["tie_word_embeddings"] = !m.untie_embeddings_and_output_weights;
  cfg["torch_dtype"] = dtype == ExportDType::BF16 ? "bfloat16" : "float32";
  if (arch == kGPT2) {
    for (const char* k : {"hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"}) cfg.erase(k);
    cfg["model_type"] = "gpt2";
    cfg["n_embd"] = m.hidden_size;
    cfg["n_layer"] = m.num_layers;
    cfg["n_head"] = m.num_attention_heads;
    cfg["n_positions"] = m.seq_length;
    cfg["n_ctx"] = m.seq_length;
    cfg["n_inner"] = m.ffn();
    cfg["activation_function"] = "gelu_new";
    cfg["layer_norm_epsilon"] = json_float(m.norm_epsilon);
    if (!cfg.contains("bos_token_id")) cfg["bos_token_id"] = m.vocab_size - 1;
    if (!cfg.contains("eos_token_id")) cfg["eos_token_id"] = m.vocab_size - 1;
    for (const char* k : {"resid_pdrop", "embd_pdrop", "attn_pdrop"})
      if (!cfg.contains(k)) cfg[k] = 0.0;
  } else {
    cfg["model_type"] = "llama";
    cfg["hidden_size"] = m.hidden_size;
    cfg["intermediate_size"] = m.ffn();
    cfg["num_hidden_layers"] = m.num_layers;
    cfg["num_attention_heads"] = m.num_attention_heads;
    cfg["num_key_value_heads"] = m.query_groups();
    cfg["head_dim"] = m.head_dim();
    cfg["hidden_act"] = "silu";
    cfg["rms_norm_eps"] = json_float(m.norm_epsilon);
    cfg["rope_theta"] = m.rotary_base;
    nlohmann::json rope = {{"rope_type", "default"}};
    if (m.use_rope_scaling)
      rope = {{"rope_type", "llama3"}, {"factor", m.rope_scaling_factor},
              {"low_freq_factor", m.rope_scaling_low_freq_factor},
              {"high_freq_factor", m.rope_scaling_high_freq_factor},
              {"original_max_position_embeddings", m.rope_scaling_original_max_position}};
    if (cfg.contains("rope_parameters")) {  // transformers v5's form
      cfg["rope_parameters"] = rope;
      cfg["rope_parameters"]["rope_theta"] = m.rotary_base;
    }
    if (m.use_rope_scaling) cfg["rope_scaling"] = rope;
    else cfg.erase("rope_scaling");
    cfg["attention_bias"] = m.add_bias_linear;
    cfg["mlp_bias"] = m.add_bias_linear;
    if (!cfg.contains("max_position_embeddings") || cfg["max_position_embeddings"].get<int>() < m.seq_length)
      cfg["max_position_embeddings"] = m.seq_length;
  }
  write_text_atomic(out / "config.json", cfg.dump(2) + "\n");
  int copied = 0;
  if (!source.empty())
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                          "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json"}) {
      const fs::path from = fs::path(source) / f;
      if (fs::exists(from, ec)) {
        fs::copy_file(from, out / f, fs::copy_options::overwrite_existing, ec);
        if (!ec) ++copied;
      }
    }
  if (!quiet) {
    std::printf("wrote %s/model.safetensors (%zu tensors) and config.json%s\n", out_dir.c_str(), tensors.size(),
                copied ? (" and " + std::to_string(copied) + " tokenizer files of " + source).c_str() : "");
    std::fflush(stdout);
  }
}

}  // namespace lossytp::hf
