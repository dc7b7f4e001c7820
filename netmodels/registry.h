// The model table and the helpers a model's factory uses to read its keys. A model is one file
// defining `void make_<name>(const KeyValues& keys, NetSpec& spec)` plus one line in
// LOSSYTP_NET_MODELS below (registry.cpp builds the table from it).
#pragma once
#include <initializer_list>
#include <set>
#include <string>
#include <vector>

#include "netmodels/netmodel.h"
#include "kernels/packet_rng.h"

namespace lossytp::net {

// X(name, one-line help). The factory of `name` is make_<name>.
#define LOSSYTP_NET_MODELS(X)                                                                   \
  X(exact, "everything arrives (no keys)")                                                      \
  X(drop, "i.i.d. packet loss: drop:rate=R, R in [0, 1]")                                       \
  X(ge, "Gilbert-Elliott bursty loss: ge:p=..,r=..[,k=1,h=0,step=packet|message,state=message|link,preset=NAME]") \
  X(caat, "CAAT-Net partial synchronisation: caat:p=P, P in (0, 1] (fraction of channels)")   \
  X(down, "link outage: down:from=I,to=J[,rounds=R]: iterations I..J (1-based) lose every packet")

// A factory reads the model's own keys (the common options already removed) and either appends
// a LossModel to spec.models (the parser then sets its index) or sets a field of spec.
using ModelFactory = void (*)(const KeyValues& keys, NetSpec& spec);

struct ModelEntry {
  const char* name;
  const char* help;
  ModelFactory make;
};
const std::vector<ModelEntry>& model_table();

#define LOSSYTP_DECLARE_NET_FACTORY(name, help) void make_##name(const KeyValues& keys, NetSpec& spec);
LOSSYTP_NET_MODELS(LOSSYTP_DECLARE_NET_FACTORY)
#undef LOSSYTP_DECLARE_NET_FACTORY

// The random stream of message m under the model with `index` (see packet_rng.h). The site
// enters the key as the full name "<group>.<site>".
inline uint64_t message_site_hash(const Message& m) {
  return fnv1a64(m.site.c_str(), fnv1a64(".", fnv1a64(m.group.c_str())));
}
inline PacketStream message_stream(const Message& m, uint64_t seed, uint32_t index) {
  return packet_stream(seed, message_site_hash(m), m.src, m.dst, m.hop, index, m.iteration, m.call,
                       static_cast<uint32_t>(m.attempt));
}

// Shortest text that reads back as the same double ("0.01", "1", "2.5e-05").
std::string format_double(double x);
// Whole-string parses; false on junk, empty text, nan/inf or overflow.
bool parse_double(const std::string& text, double& out);
bool parse_uint(const std::string& text, uint64_t& out);

// Reads a model's keys, remembers which it asked for, and names the model and the token in
// every error ("--net: drop: rate=1.5 is outside [0, 1]"). Call finish() last: it rejects keys
// nobody asked for ("--net: ge: unknown key 'q' (known: p, r, k, h, step, preset)").
class KeyReader {
 public:
  KeyReader(std::string model, const KeyValues& keys) : model_(std::move(model)), keys_(keys) {}
  bool has(const std::string& key);
  // A number in [lo, hi] ("(lo" when lo_open); `fallback` when absent.
  double number(const std::string& key, double fallback, double lo, double hi, bool lo_open = false);
  // The same, required: "--net: ge: missing key 'p'".
  double required(const std::string& key, double lo, double hi, bool lo_open = false);
  // One of `options`; `fallback` when absent.
  std::string choice(const std::string& key, const std::string& fallback,
                     std::initializer_list<const char*> options);
  const std::string& raw(const std::string& key);  // the text of a present key
  void finish() const;
  [[noreturn]] void fail(const std::string& what) const;  // "--net: <model>: <what>"

 private:
  std::string model_;
  const KeyValues& keys_;
  std::vector<std::string> known_;
};

}  // namespace lossytp::net
