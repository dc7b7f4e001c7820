#include "netmodels/sample.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "netmodels/link_states.h"

namespace lossytp::net {

namespace {

// Running statistics of a 0/1 stream fed in chunks: 64 packets at a time as a bit mask, one
// loop turn per run of equal bits (branches stay predictable however the losses fall).
struct BurstCounter {
  size_t lost = 0, bursts = 0, max_run = 0, run = 0;

  void feed(const uint8_t* x, size_t n) {
    size_t i = 0;
    for (; i + 64 <= n; i += 64) bits(pack(x + i, 64), 64);
    if (i < n) bits(pack(x + i, n - i), n - i);
  }
  // Bit j = x[j] (entries 0 or 1), k <= 64 entries.
  static uint64_t pack(const uint8_t* x, size_t k) {
    uint64_t m = 0;
    size_t j = 0;
    for (; j + 8 <= k; j += 8) {
      uint64_t w;
      std::memcpy(&w, x + j, 8);
      m |= ((w * 0x0102040810204080ull) >> 56) << j;  // the low bits of 8 bytes -> 8 bits
    }
    for (; j < k; ++j) m |= static_cast<uint64_t>(x[j] & 1) << j;
    return m;
  }
  void bits(uint64_t m, size_t k) {
    if (m == 0) return end_run();
    lost += static_cast<size_t>(std::popcount(m));
    size_t pos = 0;
    while (pos < k) {
      const uint64_t rest = m >> pos;  // pos < 64
      if (rest & 1) {
        const size_t ones = std::min<size_t>(k - pos, static_cast<size_t>(std::countr_one(rest)));
        if (run == 0) ++bursts;
        run += ones;
        pos += ones;
      } else {
        end_run();
        if (rest == 0) return;
        pos += static_cast<size_t>(std::countr_zero(rest));
      }
    }
  }
  void end_run() {
    max_run = std::max(max_run, run);
    run = 0;
  }
};

}  // namespace

LinkSample sample_link(const NetSpec& spec, size_t packets, uint64_t seed, size_t message_packets) {
  const auto t0 = std::chrono::steady_clock::now();
  LinkSample s;
  s.spec = spec.describe();
  for (const auto& model : spec.models)
    if (model->with_link_state(false)) s.state = model->link_state() || s.state == "link" ? "link" : "message";
  s.seed = spec.has_seed ? spec.seed : seed;
  s.packets = packets;
  const bool per_message = std::any_of(spec.models.begin(), spec.models.end(),
                                       [](const auto& m) { return m->steps_per_message(); });
  size_t mp = message_packets;
  if (mp == 0) mp = per_message ? 1024 : std::max<size_t>(packets, 1);
  s.message_packets = mp;

  Message m;
  m.group = "tp";
  m.site = "sample";
  m.src = 0;
  m.dst = 1;
  m.iteration = 0;
  m.elem_bytes = 1;
  LinkStates links;  // state=link: the link's chain runs on from one message to the next
  m.link_states = &links;
  std::vector<uint8_t> buf(std::min(mp, std::max<size_t>(packets, 1)));
  BurstCounter bc;
  for (size_t done = 0; done < packets; done += mp) {
    const size_t n = std::min(mp, packets - done);
    std::fill(buf.begin(), buf.begin() + n, 0);
    m.bytes = n;
    for (const auto& model : spec.models) model->drop_packets(m, s.seed, n, buf.data());
    bc.feed(buf.data(), n);
    ++m.call;
    ++s.messages;
  }
  bc.end_run();
  s.lost = bc.lost;
  s.bursts = bc.bursts;
  s.max_burst_length = bc.max_run;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  s.observed_loss_rate = packets ? static_cast<double>(bc.lost) / packets : nan;
  s.mean_burst_length = bc.bursts ? static_cast<double>(bc.lost) / bc.bursts : nan;
  s.theoretical_loss_rate = spec.stationary_loss_rate();
  s.theoretical_mean_burst_length =
      spec.models.size() == 1
          ? spec.models[0]->mean_burst_length_for(mp >= packets && !per_message ? 0 : mp)
          : nan;
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

std::vector<LinkSample> sample_link_states(const NetSpec& spec, size_t packets, uint64_t seed,
                                           size_t message_packets) {
  std::vector<LinkSample> out = {sample_link(spec, packets, seed, message_packets)};
  if (out[0].state.empty()) return out;
  NetSpec other = spec;
  const bool link = out[0].state != "link";
  for (auto& model : other.models)
    if (auto flipped = model->with_link_state(link)) model = flipped;
  out.push_back(sample_link(other, packets, seed, message_packets));
  return out;
}

namespace {
nlohmann::ordered_json sample_json(const LinkSample& s) {
  auto num = [](double x) { return std::isfinite(x) ? nlohmann::ordered_json(x) : nlohmann::ordered_json(nullptr); };
  nlohmann::ordered_json j = {
      {"spec", s.spec},
      {"packets", s.packets},
      {"message_packets", s.message_packets},
      {"messages", s.messages},
      {"seed", s.seed},
      {"lost", s.lost},
      {"observed_loss_rate", num(s.observed_loss_rate)},
      {"theoretical_loss_rate", num(s.theoretical_loss_rate)},
      {"mean_burst_length", num(s.mean_burst_length)},
      {"theoretical_mean_burst_length", num(s.theoretical_mean_burst_length)},
      {"max_burst_length", s.max_burst_length},
      {"bursts", s.bursts},
      {"seconds", s.seconds},
  };
  if (!s.state.empty()) j["state"] = s.state;
  return j;
}
}  // namespace

std::string format_samples(const std::vector<LinkSample>& v, bool json) {
  if (v.empty()) return "";
  if (json) {
    nlohmann::ordered_json j = sample_json(v[0]);
    if (v.size() > 1) {
      nlohmann::ordered_json others = nlohmann::ordered_json::array();
      for (size_t i = 1; i < v.size(); ++i) others.push_back(sample_json(v[i]));
      j["other_states"] = others;
    }
    return j.dump(2) + "\n";
  }
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v.size() > 1) {
      out += i ? "\n" : "";
      out += v[i].state == "link"
                 ? "state=link: each link's chain runs on across its messages\n"
                 : "state=message: each message starts its chain from a stationary draw\n";
    }
    out += format_sample(v[i], false);
  }
  return out;
}

std::string format_sample(const LinkSample& s, bool json) {
  if (json) return sample_json(s).dump(2) + "\n";
  auto rel = [](double obs, double th) -> std::string {
    if (!std::isfinite(obs) || !std::isfinite(th) || th == 0) return "";
    char b[32];
    std::snprintf(b, sizeof b, "%+.2f %%", 100.0 * (obs - th) / th);
    return b;
  };
  auto g = [](double x) -> std::string {
    if (std::isnan(x)) return "-";
    char b[32];
    std::snprintf(b, sizeof b, "%.6g", x);
    return b;
  };
  char line[256];
  std::string out;
  out += "spec      " + s.spec + "\n";
  std::snprintf(line, sizeof line, "packets   %zu in %zu message%s of %zu, seed %llu\n", s.packets,
                s.messages, s.messages == 1 ? "" : "s", s.message_packets,
                static_cast<unsigned long long>(s.seed));
  out += line;
  std::snprintf(line, sizeof line, "%-20s %14s %14s %10s\n", "", "observed", "theory", "diff");
  out += line;
  std::snprintf(line, sizeof line, "%-20s %14s %14s %10s\n", "loss rate", g(s.observed_loss_rate).c_str(),
                g(s.theoretical_loss_rate).c_str(), rel(s.observed_loss_rate, s.theoretical_loss_rate).c_str());
  out += line;
  std::snprintf(line, sizeof line, "%-20s %14s %14s %10s\n", "mean burst length",
                g(s.mean_burst_length).c_str(), g(s.theoretical_mean_burst_length).c_str(),
                rel(s.mean_burst_length, s.theoretical_mean_burst_length).c_str());
  out += line;
  std::snprintf(line, sizeof line, "%-20s %14zu\n%-20s %14zu\n%-20s %14zu\n", "lost packets", s.lost,
                "bursts", s.bursts, "max burst length", s.max_burst_length);
  out += line;
  std::snprintf(line, sizeof line, "elapsed   %.3f s (%.3g packets/s)\n", s.seconds,
                s.seconds > 0 ? s.packets / s.seconds : 0.0);
  out += line;
  return out;
}

}  // namespace lossytp::net
