#include "netmodels/link_states.h"

#include <cstring>
#include <stdexcept>

namespace lossytp::net {

namespace {
constexpr char kMagic[4] = {'L', 'N', 'K', 'S'};
constexpr uint32_t kVersion = 1;

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.insert(out.end(), b, b + sizeof(T));
}
}  // namespace

uint8_t& LinkStates::at(uint32_t model, const std::string& group, int src, int dst) {
  auto key = std::make_tuple(model, group, src, dst);
  auto it = states_.find(key);
  if (it == states_.end()) it = states_.emplace(std::move(key), kFresh).first;
  return it->second;
}

std::vector<uint8_t> LinkStates::serialize() const {
  std::vector<uint8_t> out(kMagic, kMagic + 4);
  put<uint32_t>(out, kVersion);
  put<uint64_t>(out, states_.size());
  for (const auto& [key, state] : states_) {
    const auto& [model, group, src, dst] = key;
    put<uint32_t>(out, model);
    put<uint32_t>(out, static_cast<uint32_t>(group.size()));
    out.insert(out.end(), group.begin(), group.end());
    put<int32_t>(out, src);
    put<int32_t>(out, dst);
    out.push_back(state);
  }
  return out;
}

void LinkStates::deserialize(const uint8_t* data, size_t bytes, const std::string& what) {
  size_t pos = 0;
  auto fail = [&](const std::string& why) -> void {
    throw std::runtime_error(what + ": the network link states are " + why);
  };
  auto get = [&](void* dst, size_t n) {
    if (bytes - pos < n) fail("truncated");
    std::memcpy(dst, data + pos, n);
    pos += n;
  };
  char magic[4];
  uint32_t version = 0;
  uint64_t count = 0;
  get(magic, 4);
  if (std::memcmp(magic, kMagic, 4) != 0) fail("corrupt (bad magic)");
  get(&version, sizeof version);
  if (version != kVersion) fail("of an unknown version " + std::to_string(version));
  get(&count, sizeof count);
  if (count > bytes) fail("corrupt (bad count)");  // every entry takes more than one byte
  std::map<std::tuple<uint32_t, std::string, int, int>, uint8_t> states;
  for (uint64_t i = 0; i < count; ++i) {
    uint32_t model = 0, len = 0;
    int32_t src = 0, dst = 0;
    uint8_t state = 0;
    get(&model, sizeof model);
    get(&len, sizeof len);
    if (len > bytes - pos) fail("truncated");
    std::string group(reinterpret_cast<const char*>(data + pos), len);
    pos += len;
    get(&src, sizeof src);
    get(&dst, sizeof dst);
    get(&state, 1);
    if (state > 1 && state != kFresh) fail("corrupt (state " + std::to_string(state) + ")");
    states[std::make_tuple(model, std::move(group), src, dst)] = state;
  }
  if (pos != bytes) fail("corrupt (" + std::to_string(bytes - pos) + " trailing bytes)");
  states_ = std::move(states);
}

}  // namespace lossytp::net
