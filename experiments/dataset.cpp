#include "experiments/dataset.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "kernels/philox.h"

namespace lossytp {

namespace {

// Counter word 3 of the Philox draws that build a source, so they never collide with the
// draws of sample() (which use their own tag) under the same key.
constexpr uint32_t kTagSuccessor = 0x4D4B5355u;  // successor choice
constexpr uint32_t kTagWeight = 0x4D4B5745u;     // successor weights
constexpr uint32_t kTagSample = 0x4D4B5341u;     // sample paths
// Log-normal successor weights exp(kWeightSigma * N(0,1)), normalised per row: with 16
// successors this puts the entropy rate near 2 nats (uniform would be ln 16 = 2.77).
constexpr double kWeightSigma = 1.5;
constexpr double kStationaryTol = 1e-13;
constexpr int kStationaryMaxIter = 1000000;

uint32_t lo32(uint64_t x) { return static_cast<uint32_t>(x); }
uint32_t hi32(uint64_t x) { return static_cast<uint32_t>(x >> 32); }

// splitmix64 finaliser: derives independent seeds (train / val paths) from the corpus seed.
uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform integer in [0, n) from two 32-bit words (modulo bias is negligible and irrelevant).
uint64_t uniform_below(uint32_t a, uint32_t b, uint64_t n) {
  return ((static_cast<uint64_t>(a) << 32) | b) % n;
}

// ---- file loading ----------------------------------------------------------------------------

constexpr int32_t kLlmcMagic = 20240520;
constexpr size_t kLlmcHeaderInts = 256;
constexpr size_t kLlmcHeaderBytes = kLlmcHeaderInts * sizeof(int32_t);

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("data file " + path + ": " + what);
}

std::vector<unsigned char> read_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) fail(path, "does not exist");
  if (!fs::is_regular_file(st)) fail(path, "is not a regular file (unreadable)");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot be opened for reading: " + std::string(std::strerror(errno)));
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  if (size < 0) fail(path, "cannot determine its size (unreadable)");
  in.seekg(0, std::ios::beg);
  std::vector<unsigned char> buf(static_cast<size_t>(size));
  if (size > 0 && !in.read(reinterpret_cast<char*>(buf.data()), size))
    fail(path, "read error (unreadable)");
  if (buf.empty()) fail(path, "is empty");
  return buf;
}

int32_t le_i32(const unsigned char* p) {
  return static_cast<int32_t>(static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                              (static_cast<uint32_t>(p[2]) << 16) |
                              (static_cast<uint32_t>(p[3]) << 24));
}

void uint16_tokens(const unsigned char* p, size_t n, std::vector<int32_t>& out) {
  out.resize(n);
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<int32_t>(p[2 * i]) | (static_cast<int32_t>(p[2 * i + 1]) << 8);
}

bool has_bin_extension(const std::string& path) {
  return std::filesystem::path(path).extension() == ".bin";
}

// Reads one token file. `format` is auto|text|uint16|llmc; the resolved format is returned in
// `resolved`.
std::vector<int32_t> read_tokens(const std::string& path, const std::string& format,
                                 std::string& resolved) {
  if (format != "auto" && format != "text" && format != "uint16" && format != "llmc")
    throw std::runtime_error("unknown data format '" + format + "' for " + path +
                             " (expected auto, text, uint16 or llmc)");
  std::vector<unsigned char> buf = read_file(path);
  resolved = format;
  if (format == "auto") {
    if (!has_bin_extension(path))
      resolved = "text";
    else if (buf.size() >= 4 && le_i32(buf.data()) == kLlmcMagic)
      resolved = "llmc";
    else
      resolved = "uint16";
  }
  std::vector<int32_t> tokens;
  if (resolved == "text") {
    tokens.assign(buf.begin(), buf.end());
  } else if (resolved == "uint16") {
    if (buf.size() % 2 != 0)
      fail(path, "has an odd byte count (" + std::to_string(buf.size()) +
                     "), not a raw uint16 token file");
    uint16_tokens(buf.data(), buf.size() / 2, tokens);
  } else {  // llmc
    if (buf.size() < kLlmcHeaderBytes)
      fail(path, "is too short (" + std::to_string(buf.size()) +
                     " bytes) for an llm.c header of 1024 bytes");
    int32_t magic = le_i32(buf.data());
    int32_t version = le_i32(buf.data() + 4);
    int32_t ntok = le_i32(buf.data() + 8);
    if (magic != kLlmcMagic)
      fail(path, "bad llm.c header: magic " + std::to_string(magic) + ", expected " +
                     std::to_string(kLlmcMagic));
    if (version != 1)
      fail(path, "unsupported llm.c header version " + std::to_string(version) +
                     " (only version 1, uint16 tokens, is supported)");
    if (ntok < 0) fail(path, "bad llm.c header: negative token count " + std::to_string(ntok));
    size_t expect = kLlmcHeaderBytes + 2 * static_cast<size_t>(ntok);
    if (buf.size() != expect)
      fail(path, "size mismatch: llm.c header says " + std::to_string(ntok) +
                     " tokens, so " + std::to_string(expect) + " bytes, but the file has " +
                     std::to_string(buf.size()));
    if (ntok == 0) fail(path, "is empty (llm.c header with 0 tokens)");
    uint16_tokens(buf.data() + kLlmcHeaderBytes, static_cast<size_t>(ntok), tokens);
  }
  return tokens;
}

int32_t max_token(const std::vector<int32_t>& v) {
  return v.empty() ? -1 : *std::max_element(v.begin(), v.end());
}

}  // namespace

// ---- MarkovSource ----------------------------------------------------------------------------

MarkovSource MarkovSource::random(int vocab, int branching, uint64_t seed) {
  if (vocab < 2)
    throw std::invalid_argument("MarkovSource: vocab must be >= 2, got " + std::to_string(vocab));
  if (branching < 1 || branching > vocab - 1)
    throw std::invalid_argument("MarkovSource: branching must be in [1, vocab-1] = [1, " +
                                std::to_string(vocab - 1) + "], got " +
                                std::to_string(branching));
  MarkovSource m;
  m.vocab = vocab;
  m.branching = branching;
  const size_t V = static_cast<size_t>(vocab), B = static_cast<size_t>(branching);
  m.next.resize(V * B);
  m.prob.resize(V * B);
  const uint32_t k0 = lo32(seed), k1 = hi32(seed);

  // Successors of t: (t+1) mod V, then branching-1 distinct tokens drawn (Floyd's algorithm)
  // from the V-2 tokens other than t and t+1, indexed by i -> (t + 2 + i) mod V.
  const uint64_t pool = V - 2;
  const size_t k = B - 1;
  std::vector<char> taken(pool, 0);
  std::vector<uint64_t> chosen;
  chosen.reserve(k);
  for (size_t t = 0; t < V; ++t) {
    int32_t* row = &m.next[t * B];
    row[0] = static_cast<int32_t>((t + 1) % V);
    chosen.clear();
    for (uint64_t j = pool - k; j < pool; ++j) {
      Philox4x32 r = philox4x32_10(static_cast<uint32_t>(t), static_cast<uint32_t>(j),
                                   static_cast<uint32_t>(j >> 32), kTagSuccessor, k0, k1);
      uint64_t c = uniform_below(r.v[0], r.v[1], j + 1);
      if (taken[c]) c = j;
      taken[c] = 1;
      chosen.push_back(c);
    }
    std::sort(chosen.begin(), chosen.end());
    for (size_t i = 0; i < k; ++i) {
      row[1 + i] = static_cast<int32_t>((t + 2 + chosen[i]) % V);
      taken[chosen[i]] = 0;
    }
    // Log-normal weights, normalised (max-shifted for safety).
    double* p = &m.prob[t * B];
    double zmax = -1e300;
    for (size_t i = 0; i < B; i += 2) {
      Philox4x32 r = philox4x32_10(static_cast<uint32_t>(t), static_cast<uint32_t>(i), 0,
                                   kTagWeight, k0, k1);
      double u1 = (static_cast<double>(r.v[0]) + 1.0) * (1.0 / 4294967296.0);
      double u2 = static_cast<double>(r.v[1]) * (1.0 / 4294967296.0);
      double rad = std::sqrt(-2.0 * std::log(u1));
      p[i] = kWeightSigma * rad * std::cos(6.283185307179586 * u2);
      if (i + 1 < B) p[i + 1] = kWeightSigma * rad * std::sin(6.283185307179586 * u2);
    }
    for (size_t i = 0; i < B; ++i) zmax = std::max(zmax, p[i]);
    double sum = 0;
    for (size_t i = 0; i < B; ++i) sum += (p[i] = std::exp(p[i] - zmax));
    for (size_t i = 0; i < B; ++i) p[i] /= sum;
  }

  // Stationary distribution: power iteration pi <- pi P from uniform, with the lazy chain
  // (I + P) / 2 (same fixed point, always aperiodic) until the L1 change of pi P is < 1e-13.
  std::vector<double> pi(V, 1.0 / static_cast<double>(V)), nxt(V);
  for (int it = 0; it < kStationaryMaxIter; ++it) {
    std::fill(nxt.begin(), nxt.end(), 0.0);
    for (size_t s = 0; s < V; ++s) {
      const double w = pi[s];
      const int32_t* row = &m.next[s * B];
      const double* p = &m.prob[s * B];
      for (size_t i = 0; i < B; ++i) nxt[static_cast<size_t>(row[i])] += w * p[i];
    }
    double diff = 0, sum = 0;
    for (size_t s = 0; s < V; ++s) diff += std::fabs(nxt[s] - pi[s]);
    if (diff < kStationaryTol) {
      for (size_t s = 0; s < V; ++s) sum += nxt[s];
      for (size_t s = 0; s < V; ++s) pi[s] = nxt[s] / sum;
      break;
    }
    for (size_t s = 0; s < V; ++s) sum += (pi[s] = 0.5 * (pi[s] + nxt[s]));
    for (size_t s = 0; s < V; ++s) pi[s] /= sum;
  }
  m.stationary = std::move(pi);
  return m;
}

double MarkovSource::entropy_rate() const {
  const size_t V = static_cast<size_t>(vocab), B = static_cast<size_t>(branching);
  double h = 0;
  for (size_t s = 0; s < V; ++s) {
    double hs = 0;
    for (size_t i = 0; i < B; ++i) {
      double p = prob[s * B + i];
      if (p > 0) hs -= p * std::log(p);
    }
    h += stationary[s] * hs;
  }
  return h;
}

std::vector<int32_t> MarkovSource::sample(size_t n, uint64_t seed) const {
  std::vector<int32_t> out(n);
  if (n == 0) return out;
  const size_t V = static_cast<size_t>(vocab), B = static_cast<size_t>(branching);
  const uint32_t k0 = lo32(seed), k1 = hi32(seed);
  // Cumulative tables; the last entry of each row is forced to 1 so a search always lands.
  std::vector<double> cdf(V * B);
  for (size_t s = 0; s < V; ++s) {
    double c = 0;
    for (size_t i = 0; i < B; ++i) cdf[s * B + i] = (c += prob[s * B + i]);
    cdf[s * B + B - 1] = 2.0;
  }
  std::vector<double> scdf(V);
  double c = 0;
  for (size_t s = 0; s < V; ++s) scdf[s] = (c += stationary[s]);
  scdf[V - 1] = 2.0;

  // Block b of the stream gives two uniforms (u = hi:lo of words 0,1 and 2,3).
  auto block = [&](uint64_t b) {
    return philox4x32_10(lo32(b), hi32(b), 0, kTagSample, k0, k1);
  };
  Philox4x32 r = block(0);
  double u = philox_uniform_double(r.v[0], r.v[1]);
  size_t s = static_cast<size_t>(std::upper_bound(scdf.begin(), scdf.end(), u) - scdf.begin());
  out[0] = static_cast<int32_t>(s);
  for (size_t t = 1; t < n; ++t) {
    // Step t uses block 1 + (t-1)/2, half (t-1)%2.
    size_t h = (t - 1) & 1;
    if (h == 0) r = block(1 + (t - 1) / 2);
    u = philox_uniform_double(r.v[2 * h], r.v[2 * h + 1]);
    const double* row = &cdf[s * B];
    size_t i = static_cast<size_t>(std::upper_bound(row, row + B, u) - row);
    s = static_cast<size_t>(next[s * B + i]);
    out[t] = static_cast<int32_t>(s);
  }
  return out;
}

// ---- corpus ----------------------------------------------------------------------------------

TokenCorpus load_corpus(const DataOptions& opt) {
  TokenCorpus c;
  if (opt.path.empty() && !opt.eval_path.empty())  // it would be ignored: the corpus has its own
    throw std::runtime_error("--eval-data " + opt.eval_path +
                             " needs --data: the built-in synthetic corpus has its own held-out split "
                             "(give --data TRAIN_FILE with it, or drop --eval-data)");
  if (opt.path.empty()) {
    MarkovSource m = MarkovSource::random(opt.vocab_size, opt.synthetic_branching, opt.seed);
    c.train = m.sample(opt.synthetic_train_tokens, mix64(opt.seed ^ 0x747261696E000001ull));
    c.val = m.sample(opt.synthetic_val_tokens, mix64(opt.seed ^ 0x76616C0000000002ull));
    c.vocab_size = opt.vocab_size;
    c.source = "synthetic-markov";
    c.format = "synthetic";
    c.entropy_floor = m.entropy_rate();
    return c;
  }

  std::string fmt;
  std::vector<int32_t> tokens = read_tokens(opt.path, opt.format, fmt);
  if (!opt.eval_path.empty()) {
    std::string efmt;
    c.val = read_tokens(opt.eval_path, opt.format, efmt);
    if ((fmt == "text") != (efmt == "text"))
      throw std::runtime_error("eval data file " + opt.eval_path + " is format " + efmt +
                               " but training data file " + opt.path + " is format " + fmt);
    c.train = std::move(tokens);
    c.source = opt.path + " + " + opt.eval_path;
  } else {
    if (!(opt.eval_fraction > 0.0 && opt.eval_fraction < 1.0))
      throw std::runtime_error("data file " + opt.path + ": eval_fraction " +
                               std::to_string(opt.eval_fraction) +
                               " is not in (0, 1); give an eval file or a fraction in (0, 1)");
    const size_t n = tokens.size();
    if (n < 2)
      fail(opt.path, "has only " + std::to_string(n) + " token, too few to hold out an eval split");
    size_t nval = static_cast<size_t>(std::llround(static_cast<double>(n) * opt.eval_fraction));
    nval = std::clamp<size_t>(nval, 1, n - 1);
    c.val.assign(tokens.end() - static_cast<std::ptrdiff_t>(nval), tokens.end());
    tokens.resize(n - nval);
    c.train = std::move(tokens);
    c.source = opt.path;
  }
  c.format = fmt;
  c.vocab_size = fmt == "text" ? 256 : std::max(max_token(c.train), max_token(c.val)) + 1;
  return c;
}

void check_sequences(const TokenCorpus& c, int seq_len) {
  if (seq_len < 1)
    throw std::runtime_error("seq-length must be >= 1, got " + std::to_string(seq_len));
  const size_t need = static_cast<size_t>(seq_len) + 1;
  const std::string what = c.format == "synthetic" ? "synthetic corpus" : "data file " + c.source;
  if (c.train.size() < need)
    throw std::runtime_error(what + " has " + std::to_string(c.train.size()) +
                             " training tokens, fewer than seq-length+1 = " +
                             std::to_string(need));
  if (c.val.size() < need)
    throw std::runtime_error(what + " has " + std::to_string(c.val.size()) +
                             " eval tokens, fewer than seq-length+1 = " + std::to_string(need));
}

void fill_sequence(const std::vector<int32_t>& split, uint64_t seed, uint64_t stream,
                   int64_t iteration, int64_t sample, int T, int32_t* x, int32_t* y) {
  const size_t n = split.size();
  if (T < 1 || n < static_cast<size_t>(T) + 1)
    throw std::invalid_argument("fill_sequence: split of " + std::to_string(n) +
                                " tokens is too short for a sequence of " + std::to_string(T) +
                                "+1 tokens");
  const uint64_t it = static_cast<uint64_t>(iteration);
  Philox4x32 r = philox4x32_10(lo32(it), hi32(it), static_cast<uint32_t>(sample),
                               static_cast<uint32_t>(stream), lo32(seed), hi32(seed));
  const size_t o = static_cast<size_t>(uniform_below(r.v[0], r.v[1], n - static_cast<size_t>(T)));
  std::copy_n(split.data() + o, T, x);
  std::copy_n(split.data() + o + 1, T, y);
}

}  // namespace lossytp
