// libFuzzer target: a whole safetensors file in memory, parsed by safetensors::parse_header.
// Each input either throws std::runtime_error or yields a header whose tensors tile the data
// buffer exactly, each holding numel * dtype size bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <set>
#include <stdexcept>
#include <string>

#include "experiments/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lossytp::safetensors;
  Header h;
  try {
    h = parse_header(data, size, size, "fuzz");
  } catch (const std::runtime_error&) {
    return 0;
  }
  if (h.data_start < 8 || h.data_start > size) std::abort();
  uint64_t at = 0;
  std::set<std::string> names;
  for (const TensorInfo& t : h.tensors) {
    if (t.begin != at || t.end < t.begin || !names.insert(t.name).second || t.name == "__metadata__") std::abort();
    // The format's bits per element (tensor.rs enum Dtype), restated independently.
    static const std::map<std::string, uint64_t> bits = {
        {"BOOL", 8}, {"F4", 4}, {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8}, {"I8", 8}, {"F8_E5M2", 8},
        {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8}, {"I16", 16}, {"U16", 16},
        {"F16", 16}, {"BF16", 16}, {"I32", 32}, {"U32", 32}, {"F32", 32}, {"C64", 64}, {"F64", 64},
        {"I64", 64}, {"U64", 64}};
    auto b = bits.find(t.dtype);
    if (b == bits.end()) std::abort();
    // Both sides are small when the parser is right (at most 8 * the input's size).
    if (static_cast<uint64_t>(t.numel()) * b->second != (t.end - t.begin) * 8) std::abort();
    at = t.end;
  }
  if (h.data_start + at != size) std::abort();
  return 0;
}
