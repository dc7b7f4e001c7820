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

constexpr int32_t kLlmcMagic = 20240520;    // GPT-2: version 1, uint16 tokens
constexpr int32_t kLlmc32Magic = 20240801;  // Llama-3: version 7, uint32 tokens
constexpr size_t kLlmcHeaderInts = 256;
constexpr size_t kLlmcHeaderBytes = kLlmcHeaderInts * sizeof(int32_t);

// Megatron indexed dataset (.idx) header: magic, u64 version, u8 dtype, u64 S, u64 D.
constexpr char kMegatronMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
constexpr size_t kMegatronHeaderBytes = 9 + 8 + 1 + 8 + 8;

[[noreturn]] void fail_as(const std::string& kind, const std::string& path, const std::string& what) {
  throw std::runtime_error(kind + " " + path + ": " + what);
}
[[noreturn]] void fail(const std::string& path, const std::string& what) {
  fail_as("data file", path, what);
}

std::vector<unsigned char> read_file(const std::string& path, const std::string& kind = "data file") {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) fail_as(kind, path, "does not exist");
  if (!fs::is_regular_file(st)) fail_as(kind, path, "is not a regular file (unreadable)");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_as(kind, path, "cannot be opened for reading: " + std::string(std::strerror(errno)));
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  if (size < 0) fail_as(kind, path, "cannot determine its size (unreadable)");
  in.seekg(0, std::ios::beg);
  std::vector<unsigned char> buf(static_cast<size_t>(size));
  if (size > 0 && !in.read(reinterpret_cast<char*>(buf.data()), size))
    fail_as(kind, path, "read error (unreadable)");
  if (buf.empty()) fail_as(kind, path, "is empty");
  return buf;
}

uint64_t le_u64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
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

bool is_file(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

// Whether `path` names a Megatron indexed dataset under format auto: a PREFIX.idx, a PREFIX
// that is no file itself but has PREFIX.idx, or a PREFIX.bin whose PREFIX.idx starts with the
// magic (a nanoGPT or llm.c .bin has no such neighbour).
bool looks_megatron(const std::string& path) {
  const std::filesystem::path p(path);
  if (p.extension() == ".idx") return true;
  if (!is_file(path)) return is_file(path + ".idx");
  if (p.extension() != ".bin") return false;
  std::ifstream idx(megatron_prefix(path) + ".idx", std::ios::binary);
  char magic[sizeof kMegatronMagic] = {};
  return idx.read(magic, sizeof magic) && std::memcmp(magic, kMegatronMagic, sizeof magic) == 0;
}

// Reads one token file. `format` is auto|text|uint16|llmc|megatron; the resolved format is
// returned in `resolved`.
std::vector<int32_t> read_tokens(const std::string& path, const std::string& format,
                                 std::string& resolved) {
  if (format != "auto" && format != "text" && format != "uint16" && format != "llmc" &&
      format != "megatron")
    throw std::runtime_error("unknown data format '" + format + "' for " + path +
                             " (expected auto, text, uint16, llmc or megatron)");
  if (format == "megatron" || (format == "auto" && looks_megatron(path))) {
    resolved = "megatron";
    return read_indexed_dataset(path).tokens;
  }
  std::vector<unsigned char> buf = read_file(path);
  resolved = format;
  if (format == "auto") {
    if (!has_bin_extension(path))
      resolved = "text";
    else if (buf.size() >= 4 &&
             (le_i32(buf.data()) == kLlmcMagic || le_i32(buf.data()) == kLlmc32Magic))
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
    if (magic != kLlmcMagic && magic != kLlmc32Magic)
      fail(path, "bad llm.c header: magic " + std::to_string(magic) + ", expected " +
                     std::to_string(kLlmcMagic) + " (uint16 tokens) or " +
                     std::to_string(kLlmc32Magic) + " (uint32 tokens)");
    const bool wide = magic == kLlmc32Magic;
    if (version != (wide ? 7 : 1))
      fail(path, "unsupported llm.c header version " + std::to_string(version) +
                     (wide ? " (magic 20240801 goes with version 7, uint32 tokens)"
                           : " (magic 20240520 goes with version 1, uint16 tokens)"));
    if (ntok < 0) fail(path, "bad llm.c header: negative token count " + std::to_string(ntok));
    const size_t item = wide ? 4 : 2;
    size_t expect = kLlmcHeaderBytes + item * static_cast<size_t>(ntok);
    if (buf.size() != expect)
      fail(path, "size mismatch: llm.c header says " + std::to_string(ntok) + " tokens of " +
                     std::to_string(item) + " bytes, so " + std::to_string(expect) +
                     " bytes, but the file has " + std::to_string(buf.size()));
    if (ntok == 0) fail(path, "is empty (llm.c header with 0 tokens)");
    const unsigned char* p = buf.data() + kLlmcHeaderBytes;
    if (!wide) {
      uint16_tokens(p, static_cast<size_t>(ntok), tokens);
    } else {
      tokens.resize(static_cast<size_t>(ntok));
      for (size_t i = 0; i < tokens.size(); ++i) {
        const int32_t t = le_i32(p + 4 * i);  // a uint32 above 2^31-1 reads negative
        if (t < 0)
          fail(path, "token " + std::to_string(i) + " is " +
                         std::to_string(static_cast<uint32_t>(t)) + ", beyond any vocabulary (>= 2^31)");
        tokens[i] = t;
      }
    }
  }
  return tokens;
}

// One uint8 per token of `data_path` (n of them), each 0 or 1.
std::vector<uint8_t> read_mask(const std::string& mask_path, size_t n, const std::string& data_path) {
  std::vector<unsigned char> buf = read_file(mask_path, "loss mask");
  if (buf.size() != n)
    fail_as("loss mask", mask_path,
            "has " + std::to_string(buf.size()) + " bytes but data " + data_path + " has " +
                std::to_string(n) + " tokens (the mask is one uint8 per token, no header)");
  for (size_t i = 0; i < n; ++i)
    if (buf[i] > 1)
      fail_as("loss mask", mask_path,
              "byte " + std::to_string(i) + " is " + std::to_string(buf[i]) + "; expected 0 or 1");
  return std::vector<uint8_t>(buf.begin(), buf.end());
}

// A mask must leave something to learn or to evaluate: a 1 at a position a window can target
// (any but the split's first token).
void require_targets(const std::vector<uint8_t>& mask, const std::string& mask_path,
                     const std::string& split) {
  if (mask.empty()) return;
  if (std::find(mask.begin() + 1, mask.end(), uint8_t{1}) == mask.end())
    fail_as("loss mask", mask_path,
            "has no 1 in the " + split + " split (past its first token): no target to take the loss on");
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

  if (!opt.eval_loss_mask.empty() && opt.eval_path.empty())
    throw std::runtime_error("--eval-loss-mask " + opt.eval_loss_mask +
                             " needs --eval-data (without it the eval split is the tail of --data, "
                             "and --loss-mask is split with it)");
  std::string fmt;
  std::vector<int32_t> tokens = read_tokens(opt.path, opt.format, fmt);
  std::vector<uint8_t> mask;
  if (!opt.loss_mask.empty()) mask = read_mask(opt.loss_mask, tokens.size(), opt.path);
  c.train_file = c.val_file = opt.path;
  if (!opt.eval_path.empty()) {
    std::string efmt;
    c.val = read_tokens(opt.eval_path, opt.format, efmt);
    if ((fmt == "text") != (efmt == "text"))
      throw std::runtime_error("eval data file " + opt.eval_path + " is format " + efmt +
                               " but training data file " + opt.path + " is format " + fmt);
    if (!opt.eval_loss_mask.empty())
      c.val_mask = read_mask(opt.eval_loss_mask, c.val.size(), opt.eval_path);
    c.train = std::move(tokens);
    c.train_mask = std::move(mask);
    c.val_file = opt.eval_path;
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
    if (!mask.empty()) {  // the mask is cut where the tokens are
      c.val_mask.assign(mask.end() - static_cast<std::ptrdiff_t>(nval), mask.end());
      mask.resize(n - nval);
      c.train_mask = std::move(mask);
    }
    c.source = opt.path;
  }
  require_targets(c.train_mask, opt.loss_mask, "training");
  require_targets(c.val_mask, opt.eval_path.empty() ? opt.loss_mask : opt.eval_loss_mask, "eval");
  c.format = fmt;
  c.vocab_size = fmt == "text" ? 256 : std::max(max_token(c.train), max_token(c.val)) + 1;
  return c;
}

void check_vocab(const TokenCorpus& c, int vocab_size) {
  // Positions are counted in the file (the eval tail of a split file starts after the train part).
  const std::string tf = c.train_file.empty() ? c.source : c.train_file;
  const std::string vf = c.val_file.empty() ? c.source : c.val_file;
  auto check = [&](const std::vector<int32_t>& split, const std::string& file, size_t base) {
    const auto bad = std::find_if(split.begin(), split.end(), [&](int32_t t) { return t >= vocab_size; });
    if (bad == split.end()) return;
    const int32_t top = vf == tf ? std::max(max_token(c.train), max_token(c.val)) : max_token(split);
    throw std::invalid_argument(
        "data file " + file + " has tokens up to " + std::to_string(top) + " but --vocab-size is " +
        std::to_string(vocab_size) + ": token id " + std::to_string(*bad) + " at position " +
        std::to_string(base + static_cast<size_t>(bad - split.begin())) +
        " is beyond the vocabulary (ids 0.." + std::to_string(vocab_size - 1) +
        "); give a --vocab-size (or model) that holds every id, or re-tokenize the data");
  };
  check(c.train, tf, 0);
  check(c.val, vf, vf == tf ? c.train.size() : 0);
}

std::string megatron_prefix(const std::string& path) {
  const std::filesystem::path p(path);
  if (p.extension() == ".bin" || p.extension() == ".idx")
    return path.substr(0, path.size() - 4);
  return path;
}

IndexedDataset read_indexed_dataset(const std::string& path) {
  const std::string prefix = megatron_prefix(path);
  const std::string idx_path = prefix + ".idx", bin_path = prefix + ".bin";
  const std::string kIdx = "megatron index";
  if (!is_file(idx_path) && !is_file(bin_path))
    fail_as("megatron dataset", prefix, "neither " + idx_path + " nor " + bin_path +
                                            " exists (--data-path takes the prefix of the pair)");
  const std::vector<unsigned char> idx = read_file(idx_path, "megatron index");
  if (idx.size() < kMegatronHeaderBytes)
    fail_as(kIdx, idx_path, "truncated: " + std::to_string(idx.size()) + " bytes, shorter than the " +
        std::to_string(kMegatronHeaderBytes) + "-byte header");
  if (std::memcmp(idx.data(), kMegatronMagic, sizeof kMegatronMagic) != 0)
    fail_as(kIdx, idx_path, "bad magic (expected MMIDIDX\\x00\\x00: not a Megatron .idx file)");
  const uint64_t version = le_u64(idx.data() + 9);
  if (version != 1) fail_as(kIdx, idx_path, "unsupported version " + std::to_string(version) + " (only version 1 is known)");
  IndexedDataset ds;
  ds.dtype_code = idx[17];
  size_t item = 0;
  switch (ds.dtype_code) {
    case 1: case 2: item = 1; break;   // uint8, int8
    case 3: case 8: item = 2; break;   // int16, uint16
    case 4: item = 4; break;           // int32
    case 5: item = 8; break;           // int64
    case 6: case 7:
      fail_as(kIdx, idx_path, "dtype code " + std::to_string(ds.dtype_code) + (ds.dtype_code == 6 ? " (float64)" : " (float32)") +
          " holds no token ids (expected an integer type: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16)");
    default:
      fail_as(kIdx, idx_path, "unknown dtype code " + std::to_string(ds.dtype_code) +
          " (expected 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64 or 8 uint16)");
  }
  const uint64_t S = le_u64(idx.data() + 18), D = le_u64(idx.data() + 26);
  const size_t body = idx.size() - kMegatronHeaderBytes;
  // 12 bytes per sequence and 8 per document index: compare before multiplying (no overflow).
  if (S > body / 12 || D > body / 8 || 12 * S + 8 * D > body) {
    const bool huge = S >= (uint64_t{1} << 59) || D >= (uint64_t{1} << 59);  // 12 S + 8 D would overflow
    fail_as(kIdx, idx_path, "truncated: the header says " + std::to_string(S) + " sequences and " + std::to_string(D) +
        " document indices, so " + (huge ? std::string("over 2^63") : std::to_string(kMegatronHeaderBytes + 12 * S + 8 * D)) +
        " bytes, but the file has " + std::to_string(idx.size()));
  }
  const size_t expect = kMegatronHeaderBytes + 12 * S + 8 * D;
  if (idx.size() == expect + S && S > 0)
    fail_as(kIdx, idx_path, "has sequence modes (a multimodal dataset), which are not supported");
  if (idx.size() != expect)
    fail_as(kIdx, idx_path, "size mismatch: the header says " + std::to_string(S) + " sequences and " + std::to_string(D) +
        " document indices, so " + std::to_string(expect) + " bytes, but the file has " +
        std::to_string(idx.size()));
  if (D < 1) fail_as(kIdx, idx_path, "has no document indices (expected S+1 for one document per sequence, at least [0])");
  const unsigned char* p = idx.data() + kMegatronHeaderBytes;
  ds.sequence_lengths.resize(S);
  ds.sequence_pointers.resize(S);
  ds.document_indices.resize(D);
  for (size_t i = 0; i < S; ++i) ds.sequence_lengths[i] = le_i32(p + 4 * i);
  for (size_t i = 0; i < S; ++i) ds.sequence_pointers[i] = static_cast<int64_t>(le_u64(p + 4 * S + 8 * i));
  for (size_t i = 0; i < D; ++i) ds.document_indices[i] = static_cast<int64_t>(le_u64(p + 12 * S + 8 * i));
  if (ds.document_indices[0] != 0)
    fail_as(kIdx, idx_path, "document_indices start at " + std::to_string(ds.document_indices[0]) + ", not 0");
  for (size_t i = 1; i < D; ++i)
    if (ds.document_indices[i] < ds.document_indices[i - 1])
      fail_as(kIdx, idx_path, "document_indices decrease at entry " + std::to_string(i));
  if (static_cast<uint64_t>(ds.document_indices[D - 1]) != S)
    fail_as(kIdx, idx_path, "document_indices end at " + std::to_string(ds.document_indices[D - 1]) + ", not at the " +
        std::to_string(S) + " sequences");

  const std::vector<unsigned char> bin = read_file(bin_path, "megatron data");
  uint64_t cum = 0;  // bytes of the sequences so far
  for (size_t i = 0; i < S; ++i) {
    const int32_t len = ds.sequence_lengths[i];
    const int64_t ptr = ds.sequence_pointers[i];
    if (len < 0) fail_as(kIdx, idx_path, "sequence " + std::to_string(i) + " has negative length " + std::to_string(len));
    const uint64_t nbytes = static_cast<uint64_t>(len) * item;
    if (ptr < 0 || static_cast<uint64_t>(ptr) > bin.size() || nbytes > bin.size() - static_cast<uint64_t>(ptr))
      fail_as(kIdx, idx_path, "sequence " + std::to_string(i) + " (" + std::to_string(nbytes) + " bytes at byte " +
          std::to_string(ptr) + ") lies beyond the end of " + bin_path + " (" + std::to_string(bin.size()) +
          " bytes)");
    if (static_cast<uint64_t>(ptr) != cum)
      fail_as(kIdx, idx_path, "sequence " + std::to_string(i) + " starts at byte " + std::to_string(ptr) + ", expected " +
          std::to_string(cum) + " (the sequences lie back to back: pointers are the running sum of "
          "length x " + std::to_string(item) + " bytes)");
    cum += nbytes;
  }
  if (cum != bin.size())
    fail_as("megatron data", bin_path,
            "has " + std::to_string(bin.size()) + " bytes but " + idx_path + " describes " +
                std::to_string(cum) + " (" + std::to_string(cum / item) + " tokens of " +
                std::to_string(item) + " bytes)");
  if (cum == 0) fail_as("megatron dataset", prefix, "holds no tokens");
  const size_t n = cum / item;
  ds.tokens.resize(n);
  const unsigned char* b = bin.data();
  for (size_t i = 0; i < n; ++i) {
    int64_t t = 0;
    switch (ds.dtype_code) {
      case 1: t = b[i]; break;
      case 2: t = static_cast<int8_t>(b[i]); break;
      case 3: t = static_cast<int16_t>(static_cast<uint16_t>(b[2 * i] | (b[2 * i + 1] << 8))); break;
      case 8: t = static_cast<uint16_t>(b[2 * i] | (b[2 * i + 1] << 8)); break;
      case 4: t = le_i32(b + 4 * i); break;
      case 5: t = static_cast<int64_t>(le_u64(b + 8 * i)); break;
    }
    if (t < 0 || t > INT32_MAX)
      fail_as("megatron data", bin_path,
              "token " + std::to_string(i) + " is " + std::to_string(t) + ", not a token id" +
                  (t < 0 ? " (negative)" : " (beyond 2^31-1)"));
    ds.tokens[i] = static_cast<int32_t>(t);
  }
  return ds;
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

size_t sequence_offset(size_t n, uint64_t seed, uint64_t stream, int64_t iteration,
                       int64_t sample, int T) {
  if (T < 1 || n < static_cast<size_t>(T) + 1)
    throw std::invalid_argument("fill_sequence: split of " + std::to_string(n) +
                                " tokens is too short for a sequence of " + std::to_string(T) +
                                "+1 tokens");
  const uint64_t it = static_cast<uint64_t>(iteration);
  Philox4x32 r = philox4x32_10(lo32(it), hi32(it), static_cast<uint32_t>(sample),
                               static_cast<uint32_t>(stream), lo32(seed), hi32(seed));
  return static_cast<size_t>(uniform_below(r.v[0], r.v[1], n - static_cast<size_t>(T)));
}

void fill_sequence(const std::vector<int32_t>& split, uint64_t seed, uint64_t stream,
                   int64_t iteration, int64_t sample, int T, int32_t* x, int32_t* y) {
  const size_t o = sequence_offset(split.size(), seed, stream, iteration, sample, T);
  std::copy_n(split.data() + o, T, x);
  std::copy_n(split.data() + o + 1, T, y);
}

void fill_sequence(const std::vector<int32_t>& split, const std::vector<uint8_t>& mask,
                   uint64_t seed, uint64_t stream, int64_t iteration, int64_t sample, int T,
                   int32_t* x, int32_t* y) {
  if (mask.empty()) return fill_sequence(split, seed, stream, iteration, sample, T, x, y);
  if (mask.size() != split.size())
    throw std::invalid_argument("fill_sequence: mask of " + std::to_string(mask.size()) +
                                " entries for a split of " + std::to_string(split.size()));
  const size_t o = sequence_offset(split.size(), seed, stream, iteration, sample, T);
  std::copy_n(split.data() + o, T, x);
  for (int t = 0; t < T; ++t) y[t] = mask[o + 1 + t] ? split[o + 1 + t] : -1;
}

int64_t count_targets(size_t n, const std::vector<uint8_t>& mask, uint64_t seed, uint64_t stream,
                      int64_t iteration, int64_t samples, int T) {
  if (mask.empty()) return samples * T;
  int64_t count = 0;
  for (int64_t s = 0; s < samples; ++s) {
    const size_t o = sequence_offset(n, seed, stream, iteration, s, T);
    count += std::count(mask.begin() + static_cast<std::ptrdiff_t>(o + 1),
                        mask.begin() + static_cast<std::ptrdiff_t>(o + 1 + T), uint8_t{1});
  }
  return count;
}

}  // namespace lossytp
