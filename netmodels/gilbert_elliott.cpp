// ge:p=..,r=..,k=..,h=.. -- Gilbert-Elliott bursty loss (netem `gemodel` parameter order).
// A two-state Markov chain, good (G) and bad (B): p = P(G -> B), r = P(B -> G); a packet is lost
// with probability 1-k in G and 1-h in B. Defaults k=1, h=0 (the Gilbert model: G loses nothing,
// B loses everything).
//
// step=packet (default): the chain moves once per packet. Each message starts from a state drawn
//   from the stationary distribution, so its mask is a pure function of the message.
// step=message: the chain moves once per message (per collective call on a link) and the packets
//   of a message drop i.i.d. at the current state's loss rate. The chain runs over the call index
//   within an iteration on a link (group, src, dst): call 0 draws from the stationary
//   distribution, call c moves it with a uniform keyed by c. A small per-thread cache makes
//   consecutive calls O(1); results never depend on it. Retransmission rounds of the reliable
//   transport (Message::attempt = j) see the chain moved j further steps on a stream of their own.
//
// state=message (default): the above; a mask is a pure function of the message.
// state=link: each directed link's chain runs on across its messages, collectives and iterations
//   (netmodels/link_states.h; the drawing rank's store, reached through Message::link_states).
//   The words are those of the message's own stream; only the start differs: the link's first
//   message draws its state from the stationary distribution (the same mask as state=message),
//   every later one starts from the state the link's previous message left, and the message's
//   first word moves it (step=packet: packet 0's transition; step=message: the message's one
//   transition). Every message the model acts on moves the chain: each ring hop, point-to-point
//   message, endpoint-mode contribution and retransmission round (later packets on the same link).
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "netmodels/link_states.h"
#include "netmodels/registry.h"

namespace lossytp::net {

namespace {

// The step=message chain cache: per thread (no locks), direct-mapped, one entry per (model,
// link, iteration) slot holding the state at the last call asked for. Only a shortcut: a miss
// recomputes the chain from call 0 of the iteration, so results never depend on it.
struct ChainCacheEntry {
  uint64_t owner = 0;  // the model's uid (0 = empty)
  uint64_t seed = 0, group = 0;
  int src = 0, dst = 0;
  int64_t iteration = 0;
  uint64_t call = 0;   // the call whose state is stored
  int state = 0;
  uint32_t k0 = 0, k1 = 0;  // the link's chain key
  uint64_t blk_id = ~0ull;  // the Philox block of transition words last drawn, and its words
  Philox4x32 blk{};
};
constexpr size_t kChainCacheSize = 64;
ChainCacheEntry* chain_cache() {
  thread_local ChainCacheEntry cache[kChainCacheSize];
  return cache;
}

struct Preset {
  const char* name;
  double p, r, loss_g, loss_b;  // netem order: p, r, 1-k, 1-h
};
// Every named configuration of the lossy-network project, by its exact name (typos included:
// scripts name them so), in netem order. The ber_* ones lose packets i.i.d. at the same rate in
// both states (the chain stays in G); ber_20 is 2 % as that project defines it.
constexpr Preset kPresets[] = {
    {"half_percent", 0.001, 0.2, 0, 1},          {"one", 0.01, 0.19, 0, 1},
    {"default", 0.05, 0.45, 0, 1},               {"long_2percent", 0.0004, 0.0196, 0, 1},
    {"short_1percent", 0.00606, 0.6, 0, 1},      {"zero", 0, 1, 0, 1},
    {"one_precent", 0.005, 0.3, 0, 0.65},        {"point2_percent", 0.001, 0.45, 0.0001, 0.86},
    {"long_point1_percent", 0.00005, 0.04995, 0, 1}, {"long_point1percent", 0.00098, 0.98, 0, 1},
    {"lomg_2percent", 0.02, 0.98, 0, 1},         {"90_loss", 1.0, 0.11111, 0, 1},
    {"long_50percent", 0.98, 0.98, 0, 1},        {"short_50percent", 0.5, 0.5, 0, 1},
    {"20_loss", 0.245, 0.98, 0, 1},              {"short_half_percent", 0.00303, 0.6, 0, 1},
    {"short_point_2percent", 0.00121, 0.6, 0, 1}, {"short_point1_percent", 0.001001, 0.999, 0, 1},
    {"short_2percent", 0.0102, 0.5, 0, 1},
    {"ber_0", 0, 1, 0, 0},                       {"ber_1", 0, 1, 0.01, 0.01},
    {"ber_2", 0, 1, 0.02, 0.02},                 {"ber_90", 0, 1, 0.9, 0.9},
    {"ber_20", 0, 1, 0.02, 0.02},
};

class GilbertElliott final : public LossModel {
 public:
  GilbertElliott(double p, double r, double k, double h, bool per_message, bool link)
      : p_(p), r_(r), k_(k), h_(h), per_message_(per_message), link_(link) {
    pi_b_ = p / (p + r);
    loss_[0] = 1.0 - k;
    loss_[1] = 1.0 - h;
    t_pi_ = prob_threshold(pi_b_);
    t_gb_ = prob_threshold(p);
    t_bg_ = prob_threshold(r);
    t_loss_[0] = prob_threshold(loss_[0]);
    t_loss_[1] = prob_threshold(loss_[1]);
  }

  std::string describe() const override {
    return "ge:p=" + format_double(p_) + ",r=" + format_double(r_) + ",k=" + format_double(k_) +
           ",h=" + format_double(h_) + (per_message_ ? ",step=message" : "") + (link_ ? ",state=link" : "");
  }

  void drop_packets(const Message& m, uint64_t seed, size_t n, uint8_t* lost) const override {
    if (link_) return drop_linked(m, seed, n, lost);
    if (!per_message_) {
      ge_packet_loss(message_stream(m, seed, index), t_pi_, t_gb_, t_bg_, t_loss_, n, lost);
      return;
    }
    const uint64_t t = t_loss_[chain_state(m, seed)];
    if (t == 0) return;                       // a state that loses nothing
    if (t >= (1ull << 32)) return (void)std::memset(lost, 1, n);  // or everything
    iid_loss(message_stream(m, seed, index), 1, t, n, lost);
  }

  double stationary_loss_rate() const override { return (1 - pi_b_) * loss_[0] + pi_b_ * loss_[1]; }

  double mean_burst_length() const override { return mean_burst_length_for(0); }

  // Mean burst = P(loss) / P(a burst starts at t) = P(l_t) / P(l_t and not l_{t-1}).
  //   across one chain transition:  B = sum_{s,s'} pi_s T(s,s') (1 - l_s) l_s'
  //   within one state (i.i.d.):    A = sum_s pi_s l_s (1 - l_s)
  //   across a fresh stationary draw: C = (1 - L) L
  // step=packet, messages of M packets: ((M-1)/M) B + (1/M) C   (M = 0: B)
  //   state=link: B whatever M (the link's stream is one chain)
  // step=message, messages of M:       ((M-1)/M) A + (1/M) B   (M = 0: the default 1024)
  //   the same under state=link (the chain moves once at every message boundary either way)
  double mean_burst_length_for(size_t message_packets) const override {
    const double pi[2] = {1 - pi_b_, pi_b_};
    const double T[2][2] = {{1 - p_, p_}, {r_, 1 - r_}};
    const double L = stationary_loss_rate();
    double A = 0, B = 0;
    for (int s = 0; s < 2; ++s) {
      A += pi[s] * loss_[s] * (1 - loss_[s]);
      for (int t = 0; t < 2; ++t) B += pi[s] * T[s][t] * (1 - loss_[s]) * loss_[t];
    }
    const double C = (1 - L) * L;
    double start;
    if (!per_message_) {
      const double M = static_cast<double>(message_packets);
      start = message_packets == 0 || link_ ? B : ((M - 1) / M) * B + (1 / M) * C;
    } else {
      const double M = static_cast<double>(message_packets ? message_packets : 1024);
      start = ((M - 1) / M) * A + (1 / M) * B;
    }
    if (L <= 0) return 0.0;
    if (start <= 0) return std::numeric_limits<double>::infinity();
    return L / start;
  }

  bool steps_per_message() const override { return per_message_; }
  bool link_state() const override { return link_; }
  std::shared_ptr<LossModel> with_link_state(bool link) const override {
    auto g = std::make_shared<GilbertElliott>(p_, r_, k_, h_, per_message_, link);
    g->index = index;
    g->links = links;
    return g;
  }

 private:
  // state=link: the message continues its link's chain (see the top of the file). O(1) lookups
  // besides the message's own words: no history is replayed.
  void drop_linked(const Message& m, uint64_t seed, size_t n, uint8_t* lost) const {
    if (!m.link_states)
      throw std::logic_error("--net: " + describe() + ": state=link keeps each link's chain in the drawing rank's " +
                             "store, and the message at " + m.group + "." + m.site +
                             " carries none (Message::link_states)");
    uint8_t& st = m.link_states->at(index, m.group, m.src, m.dst);
    const int start = st == LinkStates::kFresh ? -1 : st;
    const PacketStream ps = message_stream(m, seed, index);
    if (!per_message_) {
      const int end = ge_packet_loss(ps, t_pi_, t_gb_, t_bg_, t_loss_, n, lost, start);
      if (n > 0) st = static_cast<uint8_t>(end);
      return;
    }
    if (n == 0) return;
    const uint32_t w = packet_word(ps, 0, 0);  // lane 0: the transition (lane 1: the losses)
    const int state = start < 0 ? (w < t_pi_ ? 1 : 0) : chain_step(start, w, t_gb_, t_bg_);
    st = static_cast<uint8_t>(state);
    const uint64_t t = t_loss_[state];
    if (t == 0) return;
    if (t >= (1ull << 32)) return (void)std::memset(lost, 1, n);
    iid_loss(ps, 1, t, n, lost);
  }

  // The chain's state at message m's call (and attempt) under step=message.
  int chain_state(const Message& m, uint64_t seed) const {
    const uint64_t group = fnv1a64(m.group.c_str());
    const uint64_t call = static_cast<uint64_t>(m.call);
    const uint32_t it = static_cast<uint32_t>(m.iteration);
    // Start from the cache when it holds an earlier call of the same link and iteration.
    const uint64_t slot = seed + group + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(m.src) +
                          0xC2B2AE3D27D4EB4Full * static_cast<uint64_t>(m.dst) +
                          0x165667B19E3779F9ull * static_cast<uint64_t>(m.iteration);
    ChainCacheEntry& e = chain_cache()[(slot >> 40) % kChainCacheSize];
    uint64_t from = 0;
    int state;
    uint32_t k0, k1;
    Philox4x32 blk{};
    uint64_t blk_id = ~0ull;
    if (e.owner == uid_ && e.seed == seed && e.group == group && e.src == m.src && e.dst == m.dst &&
        e.iteration == m.iteration && e.call <= call) {
      from = e.call;
      state = e.state;
      k0 = e.k0;
      k1 = e.k1;
      blk = e.blk;
      blk_id = e.blk_id;
    } else {
      // Key of the link's chain: (seed, group, src, dst, model index, iteration's high half).
      uint64_t h = mix64(seed ^ 0x6765636861696E00ull);  // "gechain"
      h = mix64(h ^ group);
      h = mix64(h ^ ((static_cast<uint64_t>(static_cast<uint32_t>(m.src)) << 32) |
                     static_cast<uint32_t>(m.dst)));
      h = mix64(h ^ index);
      if (m.iteration >> 32) h = mix64(h ^ static_cast<uint64_t>(m.iteration >> 32));
      k0 = static_cast<uint32_t>(h);
      k1 = static_cast<uint32_t>(h >> 32);
      // Call 0: a draw from the stationary distribution (word 0 of block 0).
      state = philox4x32_10(0, 0, it, 0, k0, k1).v[0] < t_pi_ ? 1 : 0;
    }
    // Call c > 0: one transition on word c & 3 of block c >> 2.
    if (from < call) {
      for (uint64_t c = from + 1; c <= call; ++c) {
        if ((c >> 2) != blk_id) {
          blk_id = c >> 2;
          blk = philox4x32_10(static_cast<uint32_t>(blk_id), static_cast<uint32_t>(blk_id >> 32), it,
                              0, k0, k1);
        }
        state = chain_step(state, blk.v[c & 3], t_gb_, t_bg_);
      }
    }
    e = ChainCacheEntry{uid_, seed, group, m.src, m.dst, m.iteration, call, state, k0, k1, blk_id, blk};
    // Retransmission round j: j more transitions on a stream of their own (counter word 3 has
    // its top bit set), leaving the chain of later calls untouched.
    for (int j = 1; j <= m.attempt; ++j) {
      const uint32_t w = philox4x32_10(static_cast<uint32_t>(call), static_cast<uint32_t>(call >> 32),
                                       it, 0x80000000u | static_cast<uint32_t>(j >> 2), k0, k1)
                             .v[j & 3];
      state = chain_step(state, w, t_gb_, t_bg_);
    }
    return state;
  }

  double p_, r_, k_, h_;
  bool per_message_;
  bool link_;  // state=link
  double pi_b_;
  double loss_[2];
  uint64_t t_pi_, t_gb_, t_bg_, t_loss_[2];
  uint64_t uid_ = next_uid_.fetch_add(1);  // tells the cache which model an entry belongs to
  static inline std::atomic<uint64_t> next_uid_{1};
};

}  // namespace

void make_ge(const KeyValues& keys, NetSpec& spec) {
  KeyReader kr("ge", keys);
  for (const char* key : {"p", "r", "k", "h", "step", "state", "preset"}) kr.has(key);  // the known keys
  double p = -1, r = -1, k = 1, h = 0;
  if (kr.has("preset")) {
    const std::string& name = kr.raw("preset");
    const Preset* found = nullptr;
    std::string known;
    for (const Preset& ps : kPresets) {
      if (name == ps.name) found = &ps;
      known += (known.empty() ? "" : ", ") + std::string(ps.name);
    }
    if (!found) kr.fail("unknown preset '" + name + "' (known: " + known + ")");
    p = found->p;
    r = found->r;
    k = 1 - found->loss_g;
    h = 1 - found->loss_b;
  }
  // Explicit keys override the preset.
  p = p < 0 ? kr.required("p", 0, 1) : kr.number("p", p, 0, 1);
  r = r < 0 ? kr.required("r", 0, 1) : kr.number("r", r, 0, 1);
  k = kr.number("k", k, 0, 1);
  h = kr.number("h", h, 0, 1);
  const bool per_message = kr.choice("step", "packet", {"packet", "message"}) == "message";
  const bool link = kr.choice("state", "message", {"message", "link"}) == "link";
  kr.finish();
  if (p == 0 && r == 0) kr.fail("p=0 with r=0 has no stationary distribution");
  spec.models.push_back(std::make_shared<GilbertElliott>(p, r, k, h, per_message, link));
}

}  // namespace lossytp::net
