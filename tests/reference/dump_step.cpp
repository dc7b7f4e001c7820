// lossytp_dump_step: one training step of a model at TP=1, written out for an independent
// reference (tests/reference/llama_reference.py) to recompute.
//
//   lossytp_dump_step [--model PRESET] [model flags] [--micro-batch-size B] [--tokens T]
//                     [--seed S] [--perturb A] --out DIR
//
// Builds the model (Megatron flag names, the fields of models/config.h), init(seed), draws
// deterministic tokens x, y [B, T] with ids < vocab_size, runs one forward + backward with
// grad_scale = 1/(B*T) (so the gradients are those of the mean token loss) and writes
//   DIR/params.safetensors  every parameter, full shape, F32
//   DIR/grads.safetensors   every gradient, same names
//   DIR/meta.json           the configuration, x, y, the mean loss
// --perturb A (default 0.1) adds A * uniform(-1, 1) to the parameters that init() sets to a
// constant (norm weights 1, biases 0), so that every parameter changes the loss and a wrong
// bias or gain in either implementation shows in the comparison. The written parameters are
// the perturbed ones.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "experiments/safetensors.h"
#include "models/config.h"
#include "models/gpt.h"
#include "sim/comm.h"
#include "sim/local_backend.h"

using namespace lossytp;
using json = nlohmann::json;

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A uniform number in [-1, 1) from (a, b, c).
double uniform_pm1(uint64_t a, uint64_t b, uint64_t c) {
  const uint64_t h = splitmix64(splitmix64(splitmix64(a) ^ b) ^ c);
  return static_cast<double>(h >> 11) * 0x1.0p-53 * 2.0 - 1.0;
}

[[noreturn]] void usage(const std::string& msg) {
  std::cerr << "lossytp_dump_step: " << msg << "\n"
            << "usage: lossytp_dump_step [--model PRESET] [--vocab-size V] [--seq-length S]\n"
               "  [--num-layers L] [--hidden-size C] [--num-attention-heads NH]\n"
               "  [--group-query-attention] [--num-query-groups NKV] [--ffn-hidden-size F]\n"
               "  [--normalization LayerNorm|RMSNorm] [--norm-epsilon E]\n"
               "  [--position-embedding-type learned_absolute|rope] [--rotary-base B]\n"
               "  [--rotary-percent P] [--swiglu] [--disable-bias-linear]\n"
               "  [--untie-embeddings-and-output-weights] [--make-vocab-size-divisible-by D]\n"
               "  [--init-method-std S] [--micro-batch-size B] [--tokens T] [--seed S]\n"
               "  [--perturb A] --out DIR\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    ModelConfig mc;
    int B = 2, T = 0;
    uint64_t seed = 1234;
    double perturb = 0.1;
    std::string out;
    // A preset first, whatever its position, so the other flags override it.
    for (int i = 1; i + 1 < argc; ++i)
      if (std::string(argv[i]) == "--model") mc = find_preset(argv[i + 1]).model;
    for (int i = 1; i < argc; ++i) {
      const std::string k = argv[i];
      auto val = [&]() -> std::string {
        if (i + 1 >= argc) usage(k + " needs a value");
        return argv[++i];
      };
      auto ival = [&] { return std::stoi(val()); };
      auto dval = [&] { return std::stod(val()); };
      if (k == "--model") val();
      else if (k == "--vocab-size") mc.vocab_size = ival();
      else if (k == "--seq-length") mc.seq_length = ival();
      else if (k == "--num-layers") mc.num_layers = ival();
      else if (k == "--hidden-size") mc.hidden_size = ival();
      else if (k == "--num-attention-heads") mc.num_attention_heads = ival();
      else if (k == "--group-query-attention") mc.group_query_attention = true;
      else if (k == "--num-query-groups") mc.num_query_groups = ival();
      else if (k == "--ffn-hidden-size") mc.ffn_hidden_size = ival();
      else if (k == "--normalization") mc.normalization = val();
      else if (k == "--norm-epsilon") mc.norm_epsilon = static_cast<float>(dval());
      else if (k == "--position-embedding-type") mc.position_embedding_type = val();
      else if (k == "--rotary-base") mc.rotary_base = dval();
      else if (k == "--rotary-percent") mc.rotary_percent = dval();
      else if (k == "--swiglu") mc.swiglu = true;
      else if (k == "--disable-bias-linear") mc.add_bias_linear = false;
      else if (k == "--untie-embeddings-and-output-weights") mc.untie_embeddings_and_output_weights = true;
      else if (k == "--make-vocab-size-divisible-by") mc.make_vocab_size_divisible_by = ival();
      else if (k == "--init-method-std") mc.init_std = static_cast<float>(dval());
      else if (k == "--micro-batch-size") B = ival();
      else if (k == "--tokens") T = ival();
      else if (k == "--seed") seed = std::stoull(val());
      else if (k == "--perturb") perturb = dval();
      else if (k == "--out") out = val();
      else if (k == "-h" || k == "--help") usage("help");
      else usage("unknown flag " + k);
    }
    if (out.empty()) usage("--out DIR is required");
    if (T <= 0) T = mc.seq_length;
    if (B <= 0 || T > mc.seq_length) usage("need B > 0 and 0 < T <= seq-length");
    const int N = B * T, V = mc.vocab_size;

    LocalWorld world(1);
    Comm tp(world.group("tp", {0}, 0), "tp", nullptr);
    GPTModel model(mc, 0, 1);
    model.init(seed);
    ParamStore& ps = model.params();
    const auto& specs = ps.specs();
    for (size_t i = 0; i < specs.size(); ++i) {
      if (specs[i].init == Init::Normal || perturb == 0) continue;
      float* v = ps.value(static_cast<int>(i));
      for (size_t j = 0; j < specs[i].numel(); ++j)
        v[j] += static_cast<float>(perturb * uniform_pm1(seed ^ 0x5eedull, i, j));
    }

    std::vector<int32_t> x(N), y(N);
    for (int i = 0; i < N; ++i) {
      x[i] = static_cast<int32_t>(splitmix64(seed * 2654435761ull + 2 * i) % V);
      y[i] = static_cast<int32_t>(splitmix64(seed * 2654435761ull + 2 * i + 1) % V);
    }
    x[0] = V - 1;  // the last true id, next to the padding
    y[N - 1] = V - 1;

    ps.grads().zero();
    const double loss_sum = model.step(x.data(), y.data(), B, T, tp, true, 1.0f / N);

    namespace fs = std::filesystem;
    fs::create_directories(out);
    std::vector<safetensors::NamedTensor> values, grads;
    std::map<std::string, json> shapes;
    for (size_t i = 0; i < specs.size(); ++i) {
      if (specs[i].local != specs[i].full) throw std::logic_error("TP=1 shard is not the full tensor: " + specs[i].name);
      values.push_back({specs[i].name, specs[i].full, ps.value(static_cast<int>(i))});
      grads.push_back({specs[i].name, specs[i].full, ps.grad(static_cast<int>(i))});
      shapes[specs[i].name] = specs[i].full;
    }
    // Tensors ordered by name (the reader looks them up by name); {"format": "pt"} as transformers.
    const std::map<std::string, std::string> st_meta = {{"format", "pt"}};
    safetensors::write_file((fs::path(out) / "params.safetensors").string(), values, safetensors::DType::F32, st_meta);
    safetensors::write_file((fs::path(out) / "grads.safetensors").string(), grads, safetensors::DType::F32, st_meta);

    json meta;
    meta["config"] = {
        {"vocab_size", mc.vocab_size},
        {"padded_vocab_size", mc.padded_vocab_size(1)},
        {"seq_length", mc.seq_length},
        {"num_layers", mc.num_layers},
        {"hidden_size", mc.hidden_size},
        {"num_attention_heads", mc.num_attention_heads},
        {"group_query_attention", mc.group_query_attention},
        {"num_query_groups", mc.query_groups()},
        {"head_dim", mc.head_dim()},
        {"ffn_hidden_size", mc.ffn()},
        {"normalization", mc.normalization},
        {"norm_epsilon", mc.norm_epsilon},
        {"position_embedding_type", mc.position_embedding_type},
        {"rotary_base", mc.rotary_base},
        {"rotary_percent", mc.rotary_percent},
        {"rotary_dim", mc.rotary_dim()},
        {"swiglu", mc.swiglu},
        {"add_bias_linear", mc.add_bias_linear},
        {"untie_embeddings_and_output_weights", mc.untie_embeddings_and_output_weights},
        {"make_vocab_size_divisible_by", mc.make_vocab_size_divisible_by},
        {"init_method_std", mc.init_std},
    };
    meta["B"] = B;
    meta["T"] = T;
    meta["seed"] = seed;
    meta["perturb"] = perturb;
    meta["grad_scale"] = 1.0 / N;
    meta["x"] = x;
    meta["y"] = y;
    meta["loss_sum"] = loss_sum;
    meta["loss"] = loss_sum / N;
    meta["params"] = shapes;
    std::ofstream(fs::path(out) / "meta.json") << meta.dump(1) << "\n";
    std::printf("lossytp_dump_step: %zu tensors, mean loss %.8f -> %s\n", specs.size(), loss_sum / N,
                out.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "lossytp_dump_step: " << e.what() << "\n";
    return 1;
  }
}
