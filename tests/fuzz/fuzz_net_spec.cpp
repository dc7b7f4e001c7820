// libFuzzer target: the --net spec parser. Any text either parses or throws
// std::invalid_argument; a parsed spec's canonical text parses to the same text (round trip).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "netmodels/netmodel.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  lossytp::net::NetSpec spec;
  try {
    spec = lossytp::net::parse_net_spec(text);
  } catch (const std::invalid_argument&) {
    return 0;
  }
  const std::string canon = spec.describe();
  const std::string again = lossytp::net::parse_net_spec(canon).describe();
  if (again != canon) {
    std::fprintf(stderr, "round trip differs:\n  %s\n  %s\n", canon.c_str(), again.c_str());
    std::abort();
  }
  return 0;
}
