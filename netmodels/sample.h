// `lossytp net sample`: draw many packets on one link of a spec and compare what came out with
// the theory (stationary loss rate, mean loss-burst length).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "netmodels/netmodel.h"

namespace lossytp::net {

struct LinkSample {
  std::string spec;              // canonical text of the spec
  std::string state;             // "message" or "link" when a model has a state= option (GE), else ""
  uint64_t seed = 0;             // the seed used (the spec's seed= if given)
  size_t packets = 0;
  size_t message_packets = 0;    // packets per message (the last one may be shorter)
  size_t messages = 0;
  size_t lost = 0;
  size_t bursts = 0;             // runs of consecutive lost packets, across message boundaries
  size_t max_burst_length = 0;
  double observed_loss_rate = 0;
  double mean_burst_length = 0;  // lost / bursts (NaN when nothing was lost)
  double theoretical_loss_rate = 0;
  double theoretical_mean_burst_length = 0;  // NaN unless the spec has exactly one loss model
  double seconds = 0;            // wall time of the sampling
};

// Draws `packets` packets on one link (group "tp", site "sample", src 0 -> dst 1, iteration 0,
// calls 0, 1, 2, ... for consecutive messages), ignoring scopes and the transport (it measures
// the loss process itself). message_packets = 0 means: one single message of all packets, or
// 1024 when a model moves once per message (GE step=message). seed is used unless the spec has
// seed=. Models with state=link keep the link's chain in a store of the sampler's own.
LinkSample sample_link(const NetSpec& spec, size_t packets, uint64_t seed, size_t message_packets = 0);

// sample_link of the spec and, when one of its models has a state= option (GE), of the same spec
// with the other state (state=message <-> state=link), the given one first: `lossytp net sample`
// shows how the link's chain running on across messages changes the bursts.
std::vector<LinkSample> sample_link_states(const NetSpec& spec, size_t packets, uint64_t seed,
                                           size_t message_packets = 0);

// A human-readable table, or (json) one JSON object with the keys spec, packets,
// message_packets, seed, lost, observed_loss_rate, theoretical_loss_rate, mean_burst_length,
// theoretical_mean_burst_length, max_burst_length, bursts, seconds (NaN -> null), and state when
// a model has a state= option.
std::string format_sample(const LinkSample& s, bool json);
// Several samples: the tables one after the other, or (json) the first one's object with the
// others' objects in a list under "other_states".
std::string format_samples(const std::vector<LinkSample>& s, bool json);

}  // namespace lossytp::net
