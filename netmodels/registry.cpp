// The one table of network models: name -> factory. Add a model with one line in
// LOSSYTP_NET_MODELS (registry.h) and one file defining make_<name>.
#include "netmodels/registry.h"

namespace lossytp::net {

const std::vector<ModelEntry>& model_table() {
#define LOSSYTP_NET_ENTRY(name, help) ModelEntry{#name, help, &make_##name},
  static const std::vector<ModelEntry> table = {LOSSYTP_NET_MODELS(LOSSYTP_NET_ENTRY)};
#undef LOSSYTP_NET_ENTRY
  return table;
}

std::vector<std::pair<std::string, std::string>> registered_models() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const ModelEntry& e : model_table()) out.emplace_back(e.name, e.help);
  return out;
}

}  // namespace lossytp::net
