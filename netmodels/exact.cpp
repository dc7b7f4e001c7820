// exact: everything arrives. Adds no loss model, so the spec stays lossless and sim/ takes the
// backend's native collectives.
#include "netmodels/registry.h"

namespace lossytp::net {

void make_exact(const KeyValues& keys, NetSpec& spec) {
  KeyReader(std::string("exact"), keys).finish();
}

}  // namespace lossytp::net
