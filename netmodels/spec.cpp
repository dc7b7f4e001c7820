// The --net spec: parsing (one place, errors that name the token), scopes, the delivery plan of
// one message, and the canonical description.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

#include "kernels/packet_rng.h"
#include "netmodels/registry.h"

namespace lossytp::net {

namespace {

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("--net: " + what); }

std::string quote(const std::string& s) { return "'" + s + "'"; }

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t a = 0;
  while (true) {
    const size_t b = s.find(sep, a);
    out.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) return out;
    a = b + 1;
  }
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\n\r");
  if (a == std::string::npos) return {};
  return s.substr(a, s.find_last_not_of(" \t\n\r") - a + 1);
}

// Options every model may carry; they apply to the whole spec.
// The scope of a spec that names none (see parse_net_spec).
const std::vector<std::string> kDefaultScopes = {"tp.fwd", "tp.bwd"};

const char* const kCommonKeys[] = {"packet", "fill",    "scope",     "mode",   "seed",
                                   "transport", "latency", "bandwidth", "timeout",
                                   "deadline", "encode", "block"};
bool is_common(const std::string& k) {
  return std::any_of(std::begin(kCommonKeys), std::end(kCommonKeys),
                     [&](const char* c) { return k == c; });
}

const char* fill_name(Fill f) {
  switch (f) {
    case Fill::Zero: return "zero";
    case Fill::Rescale: return "rescale";
    case Fill::Local: return "local";
    case Fill::Stale: return "stale";
    case Fill::Count: return "count";
  }
  return "?";
}

// Shell glob with * (any run, dots included) and ?.
bool glob(const char* p, const char* s) {
  const char* star = nullptr;
  const char* back = nullptr;
  while (*s) {
    if (*p == '*') { star = p++; back = s; }
    else if (*p == '?' || *p == *s) { ++p; ++s; }
    else if (star) { p = star + 1; s = ++back; }
    else return false;
  }
  while (*p == '*') ++p;
  return *p == 0;
}

void apply_common(const std::string& key, const std::string& value, NetSpec& spec) {
  const std::string tok = key + "=" + value;
  if (key == "packet") {
    uint64_t v = 0;
    if (!parse_uint(value, v) || v == 0) bad(tok + " must be a positive integer (bytes)");
    spec.packet_bytes = static_cast<size_t>(v);
  } else if (key == "fill") {
    if (value == "zero") spec.fill = Fill::Zero;
    else if (value == "rescale") spec.fill = Fill::Rescale;
    else if (value == "local") spec.fill = Fill::Local;
    else if (value == "stale") spec.fill = Fill::Stale;
    else if (value == "count") spec.fill = Fill::Count;
    else bad(tok + " is not one of zero, rescale, local, stale, count");
  } else if (key == "mode") {
    if (value == "ring") spec.mode = Mode::Ring;
    else if (value == "endpoint") spec.mode = Mode::Endpoint;
    else bad(tok + " is not one of ring, endpoint");
  } else if (key == "transport") {
    if (value == "lossy") spec.transport = Transport::Lossy;
    else if (value == "reliable") spec.transport = Transport::Reliable;
    else if (value == "bounded") spec.transport = Transport::Bounded;
    else bad(tok + " is not one of lossy, reliable, bounded");
  } else if (key == "encode") {
    if (value == "none") spec.encode = Encode::None;
    else if (value == "hadamard") spec.encode = Encode::Hadamard;
    else bad(tok + " is not one of none, hadamard");
  } else if (key == "block") {
    uint64_t v = 0;
    if (!parse_uint(value, v) || v == 0 || (v & (v - 1)) != 0 || v > (1u << 24))
      bad(tok + " must be a power of two in [1, 16777216] (floats per Hadamard block)");
    spec.encode_block = static_cast<size_t>(v);
  } else if (key == "seed") {
    uint64_t v = 0;
    if (!parse_uint(value, v)) bad(tok + " must be a non-negative integer");
    spec.seed = v;
    spec.has_seed = true;
  } else if (key == "scope") {
    for (const std::string& g : split(value, '|')) {
      if (g.empty()) bad("empty pattern in " + quote(tok));
      // Site names hold none, and the spec text is trimmed: a pattern with one would not survive
      // parse_net_spec(describe()) (found by tests/fuzz/fuzz_net_spec).
      for (const char ch : g)
        if (static_cast<unsigned char>(ch) <= ' ' || ch == '\x7f')
          bad("pattern " + quote(g) + " in " + quote(tok) + " holds a space or control character");
      if (std::find(spec.scopes.begin(), spec.scopes.end(), g) == spec.scopes.end())
        spec.scopes.push_back(g);
    }
  } else {  // link: latency, bandwidth, timeout
    double v = 0;
    if (!parse_double(value, v))
      bad(tok + " is not a number" + (key == "bandwidth" ? " (bytes per second, e.g. 25e9)" : " (seconds)"));
    if (key == "bandwidth") {
      if (!(v > 0)) bad(tok + " must be > 0 (bytes per second)");
      spec.link.bandwidth_Bps = v;
    } else if (key == "deadline") {
      if (!(v > 0)) bad(tok + " must be > 0 (seconds of simulated time per message)");
      spec.deadline_s = v;
    } else {
      if (v < 0) bad(tok + " must be >= 0 (seconds)");
      (key == "latency" ? spec.link.latency_s : spec.link.timeout_s) = v;
    }
  }
}

// links=SRC-DST|...: directed links by rank within the group, '*' for any rank.
std::vector<LossModel::Link> parse_links(const std::string& model, const std::string& value) {
  const std::string tok = "links=" + value;
  std::vector<LossModel::Link> out;
  auto rank = [&](const std::string& r, const std::string& link) {
    if (r == "*") return LossModel::kAnyRank;
    uint64_t v = 0;
    if (!parse_uint(r, v) || v > 1000000)
      bad(model + ": link " + quote(link) + " in " + quote(tok) +
          " is not SRC-DST with ranks (integers >= 0) or '*'");
    return static_cast<int>(v);
  };
  for (const std::string& l : split(value, '|')) {
    const size_t dash = l.find('-');
    if (l.empty() || dash == std::string::npos)
      bad(model + ": link " + quote(l) + " in " + quote(tok) + " is not SRC-DST (e.g. 0-1, 2-*)");
    LossModel::Link k{rank(l.substr(0, dash), l), rank(l.substr(dash + 1), l)};
    if (k.src >= 0 && k.src == k.dst) bad(model + ": link " + quote(l) + " in " + quote(tok) + " joins a rank to itself");
    const bool dup = std::any_of(out.begin(), out.end(), [&](const LossModel::Link& o) {
      return o.src == k.src && o.dst == k.dst;
    });
    if (!dup) out.push_back(k);
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Links (links= on any loss model).

bool LossModel::acts_on(const Message& m) const {
  if (links.empty()) return true;
  for (const Link& l : links) {
    const bool src = l.src == kAnyRank || l.src == m.src;
    const bool dst = m.dst < 0 || l.dst == kAnyRank || l.dst == m.dst;  // endpoint: by source
    if (src && dst) return true;
  }
  return false;
}

std::string LossModel::describe_links() const {
  std::string s;
  auto r = [](int x) { return x == kAnyRank ? std::string("*") : std::to_string(x); };
  for (const Link& l : links) s += (s.empty() ? "links=" : "|") + r(l.src) + "-" + r(l.dst);
  return s;
}

void NetSpec::check_ranks(int group_size, const std::string& group) const {
  if (group_size <= 1) return;  // a group of one rank sends no messages
  for (const auto& model : models)
    for (const LossModel::Link& l : model->links)
      for (const int r : {l.src, l.dst})
        if (r != LossModel::kAnyRank && r >= group_size) {
          const std::string name = model->describe().substr(0, model->describe().find(':'));
          auto text = [](int x) { return x == LossModel::kAnyRank ? std::string("*") : std::to_string(x); };
          bad(name + ": link " + quote(text(l.src) + "-" + text(l.dst)) + " (" + model->describe_links() +
              ") names rank " + std::to_string(r) +
              ", outside the " + std::to_string(group_size) + " ranks of group " + quote(group) +
              " (ranks 0.." + std::to_string(group_size - 1) + ")");
        }
}

double NetSpec::loss_rate_for(const Message& m) const {
  double keep = 1.0;
  for (const auto& model : models)
    if (model->acts_on(m)) keep *= 1.0 - model->stationary_loss_rate();
  return 1.0 - keep;
}

// ---------------------------------------------------------------------------------------------
// Helpers shared with the model files.

std::string format_double(double x) {
  // Shortest round-trip text: plain decimals unless scientific is much shorter ("0.0004",
  // "12500000000", "1e-12", "2.5e20"), no '+' or exponent zeros ('+' separates models).
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::fixed);
  const std::string fixed(buf, r.ptr);
  r = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  std::string s(buf, r.ptr);
  const size_t e = s.find('e');
  if (e != std::string::npos) {
    std::string exp = s.substr(e + 1);
    const bool neg = !exp.empty() && exp[0] == '-';
    if (!exp.empty() && (exp[0] == '-' || exp[0] == '+')) exp.erase(0, 1);
    exp.erase(0, std::min(exp.find_first_not_of('0'), exp.size() - 1));
    s = s.substr(0, e) + "e" + (neg ? "-" : "") + exp;
  }
  return fixed.size() <= s.size() + 4 ? fixed : s;
}

bool parse_double(const std::string& text, double& out) {
  if (text.empty()) return false;
  const char* a = text.data();
  const char* e = a + text.size();
  auto r = std::from_chars(a, e, out);
  return r.ec == std::errc() && r.ptr == e && std::isfinite(out);
}

bool parse_uint(const std::string& text, uint64_t& out) {
  if (text.empty()) return false;
  const char* a = text.data();
  const char* e = a + text.size();
  auto r = std::from_chars(a, e, out);
  return r.ec == std::errc() && r.ptr == e;
}

void KeyReader::fail(const std::string& what) const { bad(model_ + ": " + what); }

bool KeyReader::has(const std::string& key) {
  if (std::find(known_.begin(), known_.end(), key) == known_.end()) known_.push_back(key);
  return keys_.count(key) > 0;
}

const std::string& KeyReader::raw(const std::string& key) {
  has(key);
  return keys_.at(key);
}

double KeyReader::number(const std::string& key, double fallback, double lo, double hi, bool lo_open) {
  if (!has(key)) return fallback;
  const std::string& v = keys_.at(key);
  const std::string tok = key + "=" + v;
  double x = 0;
  if (!parse_double(v, x)) fail(tok + " is not a number");
  if (x > hi || x < lo || (lo_open && x == lo))
    fail(tok + " is outside " + (lo_open ? "(" : "[") + format_double(lo) + ", " +
         format_double(hi) + "]");
  return x;
}

double KeyReader::required(const std::string& key, double lo, double hi, bool lo_open) {
  if (!has(key)) fail("missing key " + quote(key));
  return number(key, 0.0, lo, hi, lo_open);
}

std::string KeyReader::choice(const std::string& key, const std::string& fallback,
                              std::initializer_list<const char*> options) {
  if (!has(key)) return fallback;
  const std::string& v = keys_.at(key);
  std::string list;
  for (const char* o : options) {
    if (v == o) return v;
    list += (list.empty() ? "" : ", ") + std::string(o);
  }
  fail(key + "=" + v + " is not one of " + list);
}

void KeyReader::finish() const {
  for (const auto& [k, v] : keys_) {
    if (std::find(known_.begin(), known_.end(), k) != known_.end()) continue;
    std::string list;
    for (const std::string& s : known_) list += (list.empty() ? "" : ", ") + s;
    fail("unknown key " + quote(k) + (list.empty() ? " (it takes none)" : " (known: " + list + ")"));
  }
}

// ---------------------------------------------------------------------------------------------
// Parsing.

NetSpec parse_net_spec(const std::string& text) {
  NetSpec spec;
  spec.text = text;
  const std::string t = trim(text);
  if (t.empty()) bad("empty spec");
  std::map<std::string, std::string> common_seen;  // key -> "key=value" as first given
  std::vector<std::pair<std::string, std::string>> common;
  int caat_count = 0;
  for (const std::string& part : split(t, '+')) {
    if (trim(part).empty()) bad("empty model between '+' in " + quote(t));
    const size_t colon = part.find(':');
    const std::string name = part.substr(0, colon);
    if (name.empty()) bad("missing model name in " + quote(part));
    const ModelEntry* entry = nullptr;
    for (const ModelEntry& e : model_table())
      if (name == e.name) entry = &e;
    if (!entry) {
      std::string known;
      for (const ModelEntry& e : model_table()) known += (known.empty() ? "" : ", ") + std::string(e.name);
      bad("unknown model " + quote(name) + " (known: " + known + ")");
    }
    KeyValues own;
    std::string links_value;
    if (colon != std::string::npos) {
      const std::string rest = part.substr(colon + 1);
      if (rest.empty()) bad("malformed " + quote(part) + " (expected key=value after ':')");
      for (const std::string& kv : split(rest, ',')) {
        const size_t eq = kv.find('=');
        if (kv.empty()) bad("malformed " + quote(part) + " (empty key=value)");
        if (eq == std::string::npos) bad("malformed " + quote(name + ":" + kv) + " (expected key=value)");
        const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
        if (key.empty()) bad("malformed " + quote(name + ":" + kv) + " (empty key)");
        if (value.empty()) bad(name + ": empty value in " + quote(kv));
        if (own.count(key) || (key == "links" && !links_value.empty()))
          bad(name + ": duplicate key " + quote(key));
        if (key == "links") {  // any loss model: handled here, not by the model
          links_value = value;
          continue;
        }
        if (is_common(key)) {
          if (key != "scope" && common_seen.count(key))
            bad("option " + quote(key) + " given twice (" + quote(common_seen[key]) + " and " +
                quote(kv) + ")");
          common_seen.emplace(key, kv);
          common.emplace_back(key, value);
          own[key];  // remembered for the duplicate check within this model, erased below
        } else {
          own[key] = value;
        }
      }
      for (const auto& [k, v] : common) own.erase(k);
    }
    if (name == std::string("caat") && ++caat_count > 1) bad("caat given twice in " + quote(t));
    const size_t before = spec.models.size();
    entry->make(own, spec);
    for (size_t i = before; i < spec.models.size(); ++i) spec.models[i]->index = static_cast<uint32_t>(i);
    if (!links_value.empty()) {
      if (spec.models.size() == before)
        bad(name + ": links=" + links_value + " selects the links of a loss model; " + name + " has none");
      const std::vector<LossModel::Link> links = parse_links(name, links_value);
      for (size_t i = before; i < spec.models.size(); ++i) spec.models[i]->links = links;
    }
  }
  for (const auto& [k, v] : common) apply_common(k, v, spec);
  // Default scope: the activation traffic of tensor parallelism (forward and backward of every
  // layer, embedding and output layer), not the cross-entropy statistics or DP gradients.
  if (spec.scopes.empty()) spec.scopes = kDefaultScopes;
  if (spec.transport == Transport::Reliable && !spec.models.empty() && spec.stationary_loss_rate() >= 1.0)
    bad("transport=reliable with a loss rate of 1 can never deliver");
  if (spec.transport == Transport::Bounded && common_seen.count("deadline") == 0)
    bad("transport=bounded needs deadline=S (seconds of simulated time per message, > 0)");
  if (spec.transport != Transport::Bounded && common_seen.count("deadline"))
    bad("option " + quote(common_seen["deadline"]) + " needs transport=bounded");
  if (spec.encode != Encode::Hadamard && common_seen.count("block"))
    bad("option " + quote(common_seen["block"]) + " needs encode=hadamard");
  return spec;
}

// ---------------------------------------------------------------------------------------------
// Scopes.

bool NetSpec::in_scope(const std::string& group, const std::string& site) const {
  if (scopes.empty()) return true;
  const std::string full = group + "." + site;
  for (const std::string& p : scopes) {
    std::vector<std::string> forms = {p, p + ".*"};
    const size_t dot = p.find('.');
    if (dot != std::string::npos) forms.push_back(p.substr(0, dot) + ".*." + p.substr(dot + 1));
    for (const std::string& f : forms)
      if (glob(f.c_str(), full.c_str()) || glob(f.c_str(), site.c_str())) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// The delivery plan.

size_t NetSpec::packet_payload_bytes(size_t elem_bytes) const {
  if (elem_bytes == 0) elem_bytes = 1;
  return std::max<size_t>(1, packet_bytes / elem_bytes) * elem_bytes;
}

size_t NetSpec::packet_count(size_t bytes, size_t elem_bytes) const {
  const size_t p = packet_payload_bytes(elem_bytes);
  return (bytes + p - 1) / p;
}

uint64_t hadamard_key(const Message& m, uint64_t seed) {
  // model index 'HADA': a stream no loss model uses
  const PacketStream ps = message_stream(m, seed, 0x48414441u);
  const uint64_t k = (static_cast<uint64_t>(ps.k1) << 32) | ps.k0;
  return mix64(k ^ mix64((static_cast<uint64_t>(ps.iter_lo) << 32) | ps.call_lo));
}

size_t NetSpec::hadamard_block(size_t elem_bytes) const {
  if (encode_block != 0) return encode_block;
  // 16 packets: a lost packet is then at most ~1/16 of its block, so each coordinate's error is
  // ~sqrt(1/16) = 1/4 of the block's rms (docs/netmodels.md); larger blocks spread more but cost
  // more passes (log2 B) per message.
  const size_t want = 16 * (packet_payload_bytes(elem_bytes) / std::max<size_t>(1, elem_bytes));
  size_t b = 1;
  while (b < want) b *= 2;
  return b;
}

double NetSpec::stationary_loss_rate() const {
  double keep = 1.0;
  for (const auto& m : models) keep *= 1.0 - m->stationary_loss_rate();
  return 1.0 - keep;
}

DeliveryPlan NetSpec::plan(const Message& m, uint64_t run_seed) const {
  DeliveryPlan d;
  d.packet_bytes = packet_payload_bytes(m.elem_bytes);
  d.packets = packet_count(m.bytes, m.elem_bytes);
  d.seconds = link.latency_s + static_cast<double>(m.bytes) / link.bandwidth_Bps;
  if (models.empty() || d.packets == 0 || !in_scope(m.group, m.site)) return d;
  const uint64_t s = has_seed ? seed : run_seed;
  std::vector<uint8_t> mask(d.packets, 0);
  for (const auto& model : models)
    if (model->acts_on(m)) model->drop_packets(m, s, d.packets, mask.data());
  size_t lost = 0;
  for (uint8_t x : mask) lost += x;
  if (lost == 0) return d;
  if (transport == Transport::Lossy) {
    d.lost = lost;
    d.lost_mask = std::move(mask);
    return d;
  }
  // Reliable: every round resends the missing packets as one burst (attempt = round), after the
  // timeout; what is lost again goes into the next round.
  auto packet_size = [&](size_t i) { return std::min(d.packet_bytes, m.bytes - i * d.packet_bytes); };
  std::vector<size_t> missing;
  for (size_t i = 0; i < mask.size(); ++i)
    if (mask[i]) missing.push_back(i);
  Message r = m;
  const bool bounded = transport == Transport::Bounded;
  for (int round = 1; !missing.empty(); ++round) {
    if (bounded) {
      // A round is made only when it ends within the deadline (and the round cap): the
      // receiver then gives up at the deadline, and what is missing stays lost.
      size_t resend = 0;
      for (size_t i : missing) resend += packet_size(i);
      const double end = d.seconds + link.timeout_s + static_cast<double>(resend) / link.bandwidth_Bps;
      if (round > kMaxRetransmissionRounds || end > deadline_s) {
        d.seconds = std::max(d.seconds, deadline_s);
        d.lost = missing.size();
        d.lost_mask.assign(d.packets, 0);
        for (size_t i : missing) d.lost_mask[i] = 1;
        return d;
      }
    }
    if (round > kMaxRetransmissionRounds)
      throw std::runtime_error("--net: reliable transport: " + std::to_string(missing.size()) +
                               " packets of a message at " + m.group + "." + m.site +
                               " still lost after " + std::to_string(kMaxRetransmissionRounds) +
                               " retransmission rounds");
    size_t bytes = 0;
    for (size_t i : missing) bytes += packet_size(i);
    d.rounds += 1;
    d.retransmissions += missing.size();
    d.seconds += link.timeout_s + static_cast<double>(bytes) / link.bandwidth_Bps;
    r.attempt = round;
    std::vector<uint8_t> again(missing.size(), 0);
    for (const auto& model : models)
      if (model->acts_on(r)) model->drop_packets(r, s, again.size(), again.data());
    std::vector<size_t> next;
    for (size_t j = 0; j < missing.size(); ++j)
      if (again[j]) next.push_back(missing[j]);
    missing.swap(next);
  }
  return d;
}

// ---------------------------------------------------------------------------------------------
// Canonical text.

std::string NetSpec::describe() const {
  std::vector<std::string> parts;
  if (caat) parts.push_back("caat:p=" + format_double(caat_p));
  for (const auto& m : models) {
    std::string p = m->describe();
    if (!m->links.empty()) p += (p.find(':') == std::string::npos ? ":" : ",") + m->describe_links();
    parts.push_back(p);
  }
  if (parts.empty()) parts.push_back("exact");
  std::vector<std::string> opts;
  const NetSpec def;
  if (packet_bytes != def.packet_bytes) opts.push_back("packet=" + std::to_string(packet_bytes));
  if (fill != def.fill) opts.push_back(std::string("fill=") + fill_name(fill));
  if (!scopes.empty() && scopes != kDefaultScopes) {
    std::string s;
    for (const std::string& g : scopes) s += (s.empty() ? "" : "|") + g;
    opts.push_back("scope=" + s);
  }
  if (mode != def.mode) opts.push_back("mode=endpoint");
  if (transport == Transport::Reliable) opts.push_back("transport=reliable");
  if (transport == Transport::Bounded) opts.push_back("transport=bounded,deadline=" + format_double(deadline_s));
  if (encode == Encode::Hadamard) opts.push_back("encode=hadamard");
  if (encode_block != 0) opts.push_back("block=" + std::to_string(encode_block));
  if (has_seed) opts.push_back("seed=" + std::to_string(seed));
  if (link.latency_s != def.link.latency_s) opts.push_back("latency=" + format_double(link.latency_s));
  if (link.bandwidth_Bps != def.link.bandwidth_Bps)
    opts.push_back("bandwidth=" + format_double(link.bandwidth_Bps));
  if (link.timeout_s != def.link.timeout_s) opts.push_back("timeout=" + format_double(link.timeout_s));
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    std::string p = parts[i];
    if (i + 1 == parts.size()) {
      for (const std::string& o : opts) {
        p += (p.find(':') == std::string::npos ? ":" : ",") + o;
      }
    }
    out += (i ? "+" : "") + p;
  }
  return out;
}

}  // namespace lossytp::net
