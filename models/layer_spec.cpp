#include "models/layer_spec.h"

#include <map>
#include <stdexcept>

namespace lossytp {

// The parts, each defined in its own file.
std::unique_ptr<BlockPart> make_softmax_attention(const PartContext&);  // softmax_attention.cpp
std::unique_ptr<BlockPart> make_semigroup_attention(const PartContext&);  // semigroup_attention.cpp
std::unique_ptr<BlockPart> make_semigroup_esr_attention(const PartContext&);  // semigroup_esr_attention.cpp
std::unique_ptr<BlockPart> make_gelu_mlp(const PartContext&);           // gelu_mlp.cpp
std::unique_ptr<BlockPart> make_swiglu_mlp(const PartContext&);         // swiglu_mlp.cpp

namespace {

// The registries: one line per part.
const std::map<std::string, PartFactory>& attentions() {
  static const std::map<std::string, PartFactory> m = {
      {"semigroup", make_semigroup_attention},
      {"semigroup-esr", make_semigroup_esr_attention},
      {"softmax", make_softmax_attention},
  };
  return m;
}

const std::map<std::string, PartFactory>& mlps() {
  static const std::map<std::string, PartFactory> m = {
      {"gelu", make_gelu_mlp},
      {"swiglu", make_swiglu_mlp},
  };
  return m;
}

std::vector<std::string> names(const std::map<std::string, PartFactory>& m) {
  std::vector<std::string> v;
  for (const auto& [k, f] : m) v.push_back(k);
  return v;
}

PartFactory find(const std::map<std::string, PartFactory>& m, const std::string& name,
                 const std::string& what) {
  if (auto it = m.find(name); it != m.end()) return it->second;
  std::string known;
  for (const auto& [k, f] : m) known += (known.empty() ? "" : ", ") + k;
  throw std::invalid_argument("unknown " + what + " '" + name + "' (known: " + known + ")");
}

}  // namespace

PartFactory attention_factory(const std::string& name) { return find(attentions(), name, "--attention"); }
PartFactory mlp_factory(const std::string& name) { return find(mlps(), name, "MLP"); }
std::vector<std::string> attention_names() { return names(attentions()); }
std::vector<std::string> mlp_names() { return names(mlps()); }

}  // namespace lossytp
