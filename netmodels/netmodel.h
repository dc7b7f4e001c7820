// A network model is a function of a message: given the description of one message between two
// ranks, it answers which packets arrive. netmodels/ knows nothing about MPI, NCCL or tensors:
// sim/ describes each message (Message), asks the composed spec for a DeliveryPlan, and applies
// it to the data with the fill policy.
//
// Randomness is counter-based (Philox 4x32-10, kernels/philox.h): the fate of packet i of a
// message is a pure function of (seed, group, site, iteration, call, hop, src, dst, i), so every
// run, rank and device draws the same pattern for the same message, and links are independent.
// The per-packet arithmetic lives in kernels/packet_rng.h (usable from CUDA).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace lossytp::net {

enum class CollKind { AllReduce, AllGather, ReduceScatter, Broadcast, P2P };

class LinkStates;  // netmodels/link_states.h

struct Message {
  std::string site;       // "layer0.attn.proj.fwd", "dp.grad", ...
  std::string group;      // "tp" or "dp"
  CollKind kind = CollKind::AllReduce;
  int src = 0;            // rank in the group that sends
  int dst = 0;            // rank that receives; -1 in endpoint mode (one mask for every receiver)
  int64_t iteration = 0;  // training iteration
  int64_t call = 0;       // n-th collective of the iteration on this group
  int hop = 0;            // ring hop (0 in endpoint mode)
  size_t bytes = 0;       // payload size
  // Size of one element of the payload: a packet carries floor(packet_bytes / elem_bytes) whole
  // elements (at least one), so packets never split an element. 4 = fp32; 1 = plain bytes.
  size_t elem_bytes = 4;
  // Transmission attempt: 0 = first send; k = k-th retransmission round of the reliable
  // transport (set by NetSpec::plan, which redraws the lost packets with it).
  int attempt = 0;
  // The drawing rank's store of link chains (ge ...,state=link; netmodels/link_states.h), which
  // the message advances; nullptr: none (a model with state=link then throws).
  LinkStates* link_states = nullptr;
};

// Key/value pairs as parsed from a spec; every model reads its own keys and reports unknown ones.
using KeyValues = std::map<std::string, std::string>;

// One loss process. Implementations: drop.cpp, gilbert_elliott.cpp (one file each), registered
// in registry.cpp.
class LossModel {
 public:
  virtual ~LossModel() = default;
  virtual std::string describe() const = 0;  // canonical spec text, e.g. "ge:p=0.01,r=0.19,k=1,h=0"
  // Marks lost packets: lost[i] |= 1 for packets i in [0, n) of message m (entries stay 0 or 1).
  // The Philox key of a packet comes from (seed, group.site, src, dst, hop, index); counters from
  // (packet index, call, iteration, attempt) -- see packet_rng.h.
  virtual void drop_packets(const Message& m, uint64_t seed, size_t n, uint8_t* lost) const = 0;
  // Theory, for `lossytp net sample` and the tests.
  virtual double stationary_loss_rate() const = 0;
  // Mean run length of consecutive lost packets in one long stream of packets.
  virtual double mean_burst_length() const = 0;
  // The same for a stream cut into messages of `message_packets` packets (0 = one endless
  // message), counting runs across message boundaries. Models whose state changes at message
  // boundaries (GE step=packet restarts the chain, step=message moves it) override this.
  virtual double mean_burst_length_for(size_t /*message_packets*/) const { return mean_burst_length(); }
  // True when the model's state moves once per message (GE step=message) rather than per packet.
  virtual bool steps_per_message() const { return false; }
  // GE state=link: the model's chain runs on across a link's messages (Message::link_states).
  virtual bool link_state() const { return false; }
  // A copy of the model with state=link (true) or state=message (false), index and links kept;
  // nullptr for models without a state= option (`lossytp net sample` shows both).
  virtual std::shared_ptr<LossModel> with_link_state(bool /*link*/) const { return nullptr; }

  // Position of this model among the spec's loss models (set by the parser): separates the
  // random streams of composed models, so "drop:rate=0.1+drop:rate=0.1" loses ~19 %.
  uint32_t index = 0;

  // links=SRC-DST|...: the directed links (ranks within the message's group) this model acts
  // on; empty = every link. kAnyRank ('*') matches any rank. Set by the parser for any model.
  struct Link {
    int src = 0, dst = 0;
  };
  static constexpr int kAnyRank = -2;
  std::vector<Link> links;
  // Whether the model acts on message m: m's (src, dst) matches one of `links` (directed). An
  // endpoint-mode message (dst = -1, one mask for every receiver) matches a link by its source.
  bool acts_on(const Message& m) const;
  // "links=0-1|1-*" (empty without links), as parse_net_spec reads it back.
  std::string describe_links() const;
};

// What a receiver uses for an element that did not arrive (docs/netmodels.md). Count: in a
// reduction, the sum of the contributions that arrived scaled by contributors / arrived
// (Weintraub, Banner and Orda 2025's unbiased aggregate); elsewhere as zero.
enum class Fill { Zero, Rescale, Local, Stale, Count };
enum class Mode { Ring, Endpoint };
// How a payload is coded on the wire: none, or a randomized Hadamard transform in blocks
// (encode=hadamard, OptiReduce: a lost packet becomes small noise over its block).
enum class Encode { None, Hadamard };
enum class Transport { Lossy, Reliable, Bounded };  // bounded: reliable until NetSpec::deadline_s

struct LinkParams {
  double latency_s = 5e-6;       // per message
  double bandwidth_Bps = 25e9;   // bytes per second (200 Gb/s)
  double timeout_s = 1e-4;       // retransmission timeout of the reliable transport
};

// What happened to one message.
struct DeliveryPlan {
  size_t packet_bytes = 0;        // payload bytes per packet: whole elements, see Message::elem_bytes
  size_t packets = 0;
  size_t lost = 0;                // packets that did not arrive (0 under reliable transport)
  size_t retransmissions = 0;     // reliable/bounded transport: packets sent again, over all rounds
  size_t rounds = 0;              // reliable/bounded transport: retransmission rounds
  std::vector<uint8_t> lost_mask; // per packet, 1 = lost (empty when nothing was lost)
  double seconds = 0.0;           // simulated time on the link
};

// A reliable transport gives up (std::runtime_error) after this many retransmission rounds.
constexpr int kMaxRetransmissionRounds = 1000;

// A parsed --net spec: models composed with '+' (a packet is lost when any model loses it), the
// CAAT-Net partial-sync fraction, and the common options.
struct NetSpec {
  std::string text;  // as given
  std::vector<std::shared_ptr<LossModel>> models;
  bool caat = false;             // caat given: CAAT-Net's communication scheme (even at p=1)
  double caat_p = 1.0;           // fraction of channels synchronised (caat:p=); 1 = all
  size_t packet_bytes = 1450;
  Fill fill = Fill::Zero;
  std::vector<std::string> scopes;  // site globs; empty = everywhere. parse_net_spec defaults
                                    // to {"tp.fwd", "tp.bwd"}; scope=* selects everything
  Mode mode = Mode::Ring;
  Transport transport = Transport::Lossy;
  double deadline_s = 0.0;       // transport=bounded: simulated time budget per message (> 0)
  Encode encode = Encode::None;
  size_t encode_block = 0;       // block=N (floats, a power of two); 0 = auto, see hadamard_block
  bool has_seed = false;
  uint64_t seed = 0;             // seed= option; otherwise the run's seed is used
  LinkParams link;

  bool lossless() const { return models.empty(); }
  bool exact() const { return models.empty() && !caat; }
  // Whether a message of `group` at `site` is subject to the loss models. Scopes match the
  // full name "<group>.<site>" (e.g. "tp.layer0.mlp.fc2.fwd", "dp.dp.grad") or the site alone,
  // with shell globs (*, ?); the shorthands "tp.fwd" / "tp.bwd" mean "tp.*.fwd" / "tp.*.bwd",
  // "dp" means every dp message, "ce" every "ce.*" site, "embed" every "embed.*" site.
  // In general a pattern P also matches as "P.*" and, when dotted as "A.B", as "A.*.B".
  bool in_scope(const std::string& group, const std::string& site) const;
  // Payload bytes of one packet for elements of elem_bytes: floor(packet_bytes / elem_bytes)
  // whole elements, at least one (1450 -> 1448 for fp32).
  size_t packet_payload_bytes(size_t elem_bytes = 4) const;
  // Packets of a message of `bytes` (0 for an empty message).
  size_t packet_count(size_t bytes, size_t elem_bytes = 4) const;
  // Packets and simulated time of one message (seed: the run's seed unless seed= was given).
  // Messages outside the scopes lose nothing (their cost is still computed). Under
  // transport=reliable lost packets are redrawn (Message::attempt = round) until all arrive;
  // under transport=bounded only while the rounds fit in deadline_s (the rest stays lost).
  DeliveryPlan plan(const Message& m, uint64_t run_seed) const;
  // Stationary loss rate of the composition (independent models: 1 - prod(1 - rate_i)), on a
  // link every model acts on (links= ignored: the worst link).
  double stationary_loss_rate() const;
  // encode=hadamard: the block length (floats) for elements of elem_bytes: block= when given,
  // else the smallest power of two >= 16 packets' elements (8192 for fp32 and 1450-byte packets).
  size_t hadamard_block(size_t elem_bytes = 4) const;
  // The same over the models that act on message m's link (links=; fill=rescale uses it).
  double loss_rate_for(const Message& m) const;
  // Throws std::invalid_argument when a links= entry names a rank outside a group of
  // group_size ranks (Comm::set_network calls it; groups of one rank carry no messages).
  void check_ranks(int group_size, const std::string& group) const;
  // Canonical text; parse_net_spec(describe()) gives the same spec (and the same masks).
  std::string describe() const;
};

// Parses a spec such as "exact", "drop:rate=0.01", "ge:preset=one,step=message",
// "caat:p=0.5+ge:p=0.001,r=0.3,packet=4096,fill=rescale,scope=tp.fwd". Throws
// std::invalid_argument whose message names the offending token (unknown model, key, preset,
// value out of range, malformed text).
NetSpec parse_net_spec(const std::string& text);

// encode=hadamard: the 64-bit key of message m's random signs (Philox), a function of (seed,
// group.site, src, dst, hop, iteration, call): sender and receiver derive it alike.
uint64_t hadamard_key(const Message& m, uint64_t seed);

// Names and one-line descriptions of the registered models (for --help and errors).
std::vector<std::pair<std::string, std::string>> registered_models();

}  // namespace lossytp::net
