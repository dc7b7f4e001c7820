// Link state (ge:...,state=link, docs/netmodels.md): the Gilbert-Elliott chain of every directed
// link keeps running across its messages, collectives and iterations. The chains live here, in a
// store owned by the rank that draws the masks (sim/comm.h: the receiver of a ring hop or a
// point-to-point message, the sender of an endpoint-mode contribution), reached through
// Message::link_states. A link's state is a function of the seed and the link's sequence of
// messages; the store is saved in the rank's checkpoint (experiments/checkpoint.h) so a resumed
// run continues every chain where it stopped. The models themselves stay const and shareable.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace lossytp::net {

class LinkStates {
 public:
  // The state of a link that has carried no message yet: the model draws it from the stationary
  // distribution (the first message of a link is the same as under state=message).
  static constexpr uint8_t kFresh = 0xFF;

  // The state (0 good, 1 bad, or kFresh) of the chain of model `model` (its index in the spec)
  // on the directed link src -> dst of `group` (dst = -1: an endpoint-mode contribution).
  // O(log links) per message: no history is replayed.
  uint8_t& at(uint32_t model, const std::string& group, int src, int dst);

  size_t size() const { return states_.size(); }
  bool empty() const { return states_.empty(); }
  void clear() { states_.clear(); }
  bool operator==(const LinkStates& o) const { return states_ == o.states_; }

  // A compact binary form (little-endian): "LNKS", version 1, the number of links, then per link
  // (model u32, group length u32, group bytes, src i32, dst i32, state u8), in key order.
  std::vector<uint8_t> serialize() const;
  // Replaces the contents with a serialized store; throws std::runtime_error naming `what` when
  // the bytes are not one (truncated, bad magic or version, a state that is not 0, 1 or fresh).
  void deserialize(const uint8_t* data, size_t bytes, const std::string& what);

 private:
  std::map<std::tuple<uint32_t, std::string, int, int>, uint8_t> states_;
};

}  // namespace lossytp::net
