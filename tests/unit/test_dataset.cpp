// Token data: the synthetic Markov source (exact entropy rate vs Monte Carlo, stationarity,
// determinism), token files (text / raw uint16 / llm.c) and their error messages, and the
// Philox-driven sequence sampler.
#include <catch2/catch.hpp>

#include "common/temp_dir.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "experiments/dataset.h"

using namespace lossytp;
namespace fs = std::filesystem;

namespace {

struct TempDir : testing::TempDir {
  TempDir() : testing::TempDir("dataset") {}
};

void write_bytes(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void put_u16(std::vector<unsigned char>& b, uint16_t v) {
  b.push_back(static_cast<unsigned char>(v & 0xff));
  b.push_back(static_cast<unsigned char>(v >> 8));
}
void put_i32(std::vector<unsigned char>& b, int32_t v) {
  uint32_t u = static_cast<uint32_t>(v);
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<unsigned char>(u >> (8 * i)));
}

std::vector<unsigned char> uint16_file(const std::vector<uint16_t>& toks) {
  std::vector<unsigned char> b;
  for (uint16_t t : toks) put_u16(b, t);
  return b;
}

std::vector<unsigned char> llmc_file(const std::vector<uint16_t>& toks, int32_t version = 1,
                                     int32_t header_count = -1, int32_t magic = 20240520) {
  std::vector<unsigned char> b;
  put_i32(b, magic);
  put_i32(b, version);
  put_i32(b, header_count < 0 ? static_cast<int32_t>(toks.size()) : header_count);
  for (int i = 3; i < 256; ++i) put_i32(b, 0);
  for (uint16_t t : toks) put_u16(b, t);
  return b;
}

// load_corpus must throw a runtime_error whose message contains `path` and `what`.
void require_throws_naming(const DataOptions& opt, const std::string& path,
                           const std::string& what) {
  try {
    (void)load_corpus(opt);
    FAIL("load_corpus did not throw for " << path);
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find(what) != std::string::npos);
  }
}

double log_prob(const MarkovSource& m, int32_t from, int32_t to) {
  for (int i = 0; i < m.branching; ++i)
    if (m.next[static_cast<size_t>(from) * m.branching + i] == to)
      return std::log(m.prob[static_cast<size_t>(from) * m.branching + i]);
  return -INFINITY;
}

}  // namespace

TEST_CASE("markov source structure and stationary distribution", "[data]") {
  for (auto [V, B] : {std::pair{64, 4}, std::pair{4096, 16}, std::pair{3, 2}, std::pair{5, 1}}) {
    INFO("vocab " << V << " branching " << B);
    MarkovSource m = MarkovSource::random(V, B, 99);
    REQUIRE(m.next.size() == static_cast<size_t>(V) * B);
    REQUIRE(m.prob.size() == static_cast<size_t>(V) * B);
    REQUIRE(m.stationary.size() == static_cast<size_t>(V));
    // Count violations rather than CHECK each entry (tens of thousands of them).
    int bad_first = 0, self_loops = 0, out_of_range = 0, nonpositive = 0, dups = 0, bad_rows = 0;
    for (int t = 0; t < V; ++t) {
      const int32_t* succ = &m.next[static_cast<size_t>(t) * B];
      const double* p = &m.prob[static_cast<size_t>(t) * B];
      bad_first += succ[0] != (t + 1) % V;
      double rs = 0;
      for (int i = 0; i < B; ++i) {
        self_loops += succ[i] == t;
        out_of_range += succ[i] < 0 || succ[i] >= V;
        nonpositive += !(p[i] > 0);
        rs += p[i];
        for (int j = 0; j < i; ++j) dups += succ[j] == succ[i];
      }
      bad_rows += std::fabs(rs - 1.0) > 1e-12;
    }
    CHECK(bad_first == 0);
    CHECK(self_loops == 0);
    CHECK(out_of_range == 0);
    CHECK(nonpositive == 0);
    CHECK(dups == 0);
    CHECK(bad_rows == 0);
    // pi sums to 1 and pi P = pi.
    double sum = 0;
    std::vector<double> pp(V, 0.0);
    for (int s = 0; s < V; ++s) {
      sum += m.stationary[s];
      if (m.stationary[s] < 0) FAIL("negative stationary probability");
      for (int i = 0; i < B; ++i) pp[m.next[s * B + i]] += m.stationary[s] * m.prob[s * B + i];
    }
    CHECK(std::fabs(sum - 1.0) < 1e-12);
    double l1 = 0;
    for (int s = 0; s < V; ++s) l1 += std::fabs(pp[s] - m.stationary[s]);
    CHECK(l1 < 1e-11);
  }
  CHECK_THROWS(MarkovSource::random(1, 1, 1));
  CHECK_THROWS(MarkovSource::random(16, 16, 1));
  CHECK_THROWS(MarkovSource::random(16, 0, 1));
}

TEST_CASE("markov entropy rate matches a Monte Carlo estimate", "[data]") {
  for (auto [V, B] : {std::pair{4096, 16}, std::pair{64, 4}, std::pair{256, 32}}) {
    MarkovSource m = MarkovSource::random(V, B, 7);
    const double h = m.entropy_rate();
    const size_t n = 2000000;
    std::vector<int32_t> x = m.sample(n, 12345);
    REQUIRE(x.size() == n);
    double s = 0, s2 = 0;
    size_t impossible = 0;  // transitions the source does not allow
    for (size_t t = 0; t + 1 < n; ++t) {
      double l = -log_prob(m, x[t], x[t + 1]);
      if (!std::isfinite(l)) {
        ++impossible;
        continue;
      }
      s += l;
      s2 += l * l;
    }
    REQUIRE(impossible == 0);
    const double N = static_cast<double>(n - 1);
    const double mean = s / N, se = std::sqrt((s2 / N - mean * mean) / N);
    INFO("vocab " << V << " branching " << B << ": exact " << h << ", Monte Carlo " << mean
                  << " +- " << se);
    CHECK(std::fabs(mean - h) < std::max(3 * se, 0.01 * h));
    CHECK(std::fabs(mean - h) < 0.01 * h);
  }
  // The default corpus's floor is in the intended range.
  double h16 = MarkovSource::random(4096, 16, 1234).entropy_rate();
  CHECK(h16 > 1.5);
  CHECK(h16 < 2.5);
}

TEST_CASE("markov sample visits states in stationary proportion", "[data]") {
  MarkovSource m = MarkovSource::random(32, 4, 3);
  std::vector<int32_t> x = m.sample(1000000, 5);
  std::vector<double> count(32, 0.0);
  for (int32_t t : x) count[t] += 1;
  double tv = 0;
  for (int s = 0; s < 32; ++s) tv += std::fabs(count[s] / x.size() - m.stationary[s]);
  CHECK(tv < 0.02);
}

TEST_CASE("synthetic corpus is deterministic in its seed", "[data]") {
  DataOptions opt;
  opt.vocab_size = 512;
  opt.synthetic_train_tokens = 100000;
  opt.synthetic_val_tokens = 20000;
  TokenCorpus a = load_corpus(opt), b = load_corpus(opt);
  CHECK(a.format == "synthetic");
  CHECK(a.source == "synthetic-markov");
  CHECK(a.vocab_size == 512);
  REQUIRE(a.entropy_floor.has_value());
  CHECK(*a.entropy_floor == MarkovSource::random(512, 16, opt.seed).entropy_rate());
  CHECK(a.train.size() == 100000);
  CHECK(a.val.size() == 20000);
  CHECK(a.train == b.train);
  CHECK(a.val == b.val);
  // train and val are different paths.
  CHECK(!std::equal(a.val.begin(), a.val.end(), a.train.begin()));
  opt.seed = 4321;
  TokenCorpus c = load_corpus(opt);
  CHECK(c.train != a.train);
  CHECK(c.val != a.val);
  CHECK(*c.entropy_floor != *a.entropy_floor);
  CHECK(std::all_of(a.train.begin(), a.train.end(), [](int32_t t) { return t >= 0 && t < 512; }));
}

TEST_CASE("default synthetic corpus has the documented size and a floor", "[data]") {
  DataOptions opt;  // vocab 4096, 2M + 128k tokens
  TokenCorpus c = load_corpus(opt);
  CHECK(c.train.size() == (size_t(1) << 21));
  CHECK(c.val.size() == (size_t(1) << 17));
  REQUIRE(c.entropy_floor);
  CHECK(*c.entropy_floor > 0.5);
  CHECK(*c.entropy_floor < std::log(16.0));  // below the uniform choice among 16 successors
}

TEST_CASE("token files round-trip", "[data]") {
  TempDir d;
  SECTION("text: bytes are tokens, last eval_fraction held out") {
    std::string p = d.file("corpus.txt");
    std::string text = "hello, world! \xff\x01 the quick brown fox";
    write_bytes(p, std::vector<unsigned char>(text.begin(), text.end()));
    DataOptions opt;
    opt.path = p;
    opt.eval_fraction = 0.25;
    TokenCorpus c = load_corpus(opt);
    CHECK(c.format == "text");
    CHECK(c.vocab_size == 256);
    CHECK(!c.entropy_floor.has_value());
    CHECK(c.source == p);
    std::vector<int32_t> all = c.train;
    all.insert(all.end(), c.val.begin(), c.val.end());
    REQUIRE(all.size() == text.size());
    for (size_t i = 0; i < text.size(); ++i) CHECK(all[i] == static_cast<unsigned char>(text[i]));
    CHECK(c.val.size() == static_cast<size_t>(std::llround(text.size() * 0.25)));
  }
  SECTION("raw uint16 (nanoGPT) with a separate eval file") {
    std::vector<uint16_t> tr = {1, 2, 3, 50256, 7, 0, 65535 - 1};
    std::vector<uint16_t> va = {9, 8, 60000};
    write_bytes(d.file("train.bin"), uint16_file(tr));
    write_bytes(d.file("val.bin"), uint16_file(va));
    DataOptions opt;
    opt.path = d.file("train.bin");
    opt.eval_path = d.file("val.bin");
    TokenCorpus c = load_corpus(opt);
    CHECK(c.format == "uint16");
    CHECK(c.train == std::vector<int32_t>(tr.begin(), tr.end()));
    CHECK(c.val == std::vector<int32_t>(va.begin(), va.end()));
    CHECK(c.vocab_size == 65535);
    CHECK(c.source.find(d.file("train.bin")) != std::string::npos);
    CHECK(c.source.find(d.file("val.bin")) != std::string::npos);
  }
  SECTION("raw uint16 split by eval_fraction") {
    std::vector<uint16_t> tr;
    for (int i = 0; i < 100; ++i) tr.push_back(static_cast<uint16_t>(i * 3));
    write_bytes(d.file("tok.bin"), uint16_file(tr));
    DataOptions opt;
    opt.path = d.file("tok.bin");
    opt.eval_fraction = 0.1;
    TokenCorpus c = load_corpus(opt);
    CHECK(c.format == "uint16");
    REQUIRE(c.train.size() == 90);
    REQUIRE(c.val.size() == 10);
    CHECK(c.train[89] == 89 * 3);
    CHECK(c.val[0] == 90 * 3);
    CHECK(c.vocab_size == 99 * 3 + 1);
  }
  SECTION("llm.c headered .bin") {
    std::vector<uint16_t> tr = {50256, 15496, 11, 995, 0, 1};
    std::vector<uint16_t> va = {50256, 40, 2};
    write_bytes(d.file("x_train.bin"), llmc_file(tr));
    write_bytes(d.file("x_val.bin"), llmc_file(va));
    DataOptions opt;
    opt.path = d.file("x_train.bin");
    opt.eval_path = d.file("x_val.bin");
    TokenCorpus c = load_corpus(opt);
    CHECK(c.format == "llmc");
    CHECK(c.train == std::vector<int32_t>(tr.begin(), tr.end()));
    CHECK(c.val == std::vector<int32_t>(va.begin(), va.end()));
    CHECK(c.vocab_size == 50257);
  }
  SECTION("explicit format overrides the extension") {
    std::vector<uint16_t> tr = {5, 6, 7, 8};
    write_bytes(d.file("tok.dat"), uint16_file(tr));
    DataOptions opt;
    opt.path = d.file("tok.dat");
    opt.format = "uint16";
    opt.eval_fraction = 0.5;
    TokenCorpus c = load_corpus(opt);
    CHECK(c.format == "uint16");
    CHECK(c.train == std::vector<int32_t>{5, 6});
    CHECK(c.val == std::vector<int32_t>{7, 8});
    opt.format = "text";
    TokenCorpus t = load_corpus(opt);
    CHECK(t.format == "text");
    CHECK(t.train.size() + t.val.size() == 8);
  }
}

TEST_CASE("token file errors name the file and the problem", "[data]") {
  TempDir d;
  DataOptions opt;
  SECTION("missing") {
    opt.path = d.file("nope.bin");
    require_throws_naming(opt, opt.path, "does not exist");
  }
  SECTION("missing eval file") {
    write_bytes(d.file("a.bin"), uint16_file({1, 2, 3}));
    opt.path = d.file("a.bin");
    opt.eval_path = d.file("nope_val.bin");
    require_throws_naming(opt, opt.eval_path, "does not exist");
  }
  SECTION("an eval file without --data (the synthetic corpus would ignore it)") {
    write_bytes(d.file("v.bin"), uint16_file({1, 2, 3}));
    opt.eval_path = d.file("v.bin");
    require_throws_naming(opt, opt.eval_path, "needs --data");
  }
  SECTION("unreadable (a directory)") {
    opt.path = d.file("adir.bin");
    fs::create_directories(opt.path);
    require_throws_naming(opt, opt.path, "not a regular file");
  }
  SECTION("empty") {
    write_bytes(d.file("empty.bin"), {});
    opt.path = d.file("empty.bin");
    require_throws_naming(opt, opt.path, "empty");
    write_bytes(d.file("empty.txt"), {});
    opt.path = d.file("empty.txt");
    require_throws_naming(opt, opt.path, "empty");
  }
  SECTION("odd byte count") {
    write_bytes(d.file("odd.bin"), {1, 0, 2});
    opt.path = d.file("odd.bin");
    require_throws_naming(opt, opt.path, "odd byte count");
  }
  SECTION("unsupported llm.c version") {
    write_bytes(d.file("v2.bin"), llmc_file({1, 2, 3}, 2));
    opt.path = d.file("v2.bin");
    require_throws_naming(opt, opt.path, "unsupported llm.c header version 2");
  }
  SECTION("llm.c size mismatch") {
    write_bytes(d.file("short.bin"), llmc_file({1, 2, 3}, 1, 10));
    opt.path = d.file("short.bin");
    require_throws_naming(opt, opt.path, "size mismatch");
  }
  SECTION("llm.c truncated header") {
    std::vector<unsigned char> b = llmc_file({1, 2});
    b.resize(100);
    write_bytes(d.file("trunc.bin"), b);
    opt.path = d.file("trunc.bin");
    require_throws_naming(opt, opt.path, "llm.c header");
  }
  SECTION("bad llm.c magic when the format is forced") {
    write_bytes(d.file("raw.bin"), llmc_file({1, 2}, 1, -1, 12345));
    opt.path = d.file("raw.bin");
    opt.format = "llmc";
    require_throws_naming(opt, opt.path, "bad llm.c header");
  }
  SECTION("eval_fraction out of (0,1)") {
    write_bytes(d.file("ok.bin"), uint16_file({1, 2, 3, 4}));
    opt.path = d.file("ok.bin");
    for (double f : {0.0, 1.0, -0.5, 1.5}) {
      opt.eval_fraction = f;
      require_throws_naming(opt, opt.path, "eval_fraction");
    }
  }
  SECTION("unknown format") {
    write_bytes(d.file("ok.bin"), uint16_file({1, 2, 3, 4}));
    opt.path = d.file("ok.bin");
    opt.format = "parquet";
    require_throws_naming(opt, opt.path, "parquet");
  }
}

TEST_CASE("check_sequences rejects splits shorter than seq_len+1", "[data]") {
  TokenCorpus c;
  c.format = "uint16";
  c.source = "/data/tiny.bin";
  c.train = std::vector<int32_t>(65, 1);
  c.val = std::vector<int32_t>(65, 1);
  CHECK_NOTHROW(check_sequences(c, 64));
  try {
    check_sequences(c, 65);
    FAIL("no throw");
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    CHECK(msg.find("/data/tiny.bin") != std::string::npos);
    CHECK(msg.find("65 training tokens") != std::string::npos);
    CHECK(msg.find("seq-length+1 = 66") != std::string::npos);
  }
  c.val.resize(10);
  CHECK_THROWS_WITH(check_sequences(c, 64), Catch::Contains("10 eval tokens"));
}

TEST_CASE("fill_sequence is a deterministic shifted window", "[data]") {
  std::vector<int32_t> split(1000);
  for (size_t i = 0; i < split.size(); ++i) split[i] = static_cast<int32_t>(i);
  const int T = 32;
  std::vector<int32_t> x(T), y(T), x2(T), y2(T);
  std::map<int32_t, int> starts;
  for (int64_t it = 0; it < 50; ++it) {
    for (int64_t s = 0; s < 8; ++s) {
      fill_sequence(split, 42, 0, it, s, T, x.data(), y.data());
      fill_sequence(split, 42, 0, it, s, T, x2.data(), y2.data());
      REQUIRE(x == x2);
      REQUIRE(y == y2);
      REQUIRE(x[0] >= 0);
      REQUIRE(x[0] + T + 1 <= 1000);
      for (int t = 0; t < T; ++t) {
        REQUIRE(x[t] == x[0] + t);  // contiguous window
        REQUIRE(y[t] == x[t] + 1);  // y is x shifted by one
      }
      starts[x[0]]++;
    }
  }
  CHECK(starts.size() > 300);  // offsets vary across iterations and samples
  // Different stream / seed / sample give different windows.
  fill_sequence(split, 42, 0, 3, 1, T, x.data(), y.data());
  fill_sequence(split, 42, 1, 3, 1, T, x2.data(), y2.data());
  CHECK(x != x2);
  fill_sequence(split, 43, 0, 3, 1, T, x2.data(), y2.data());
  CHECK(x != x2);
  // Large iterations use the high counter word.
  fill_sequence(split, 42, 0, int64_t(1) << 32, 1, T, x2.data(), y2.data());
  fill_sequence(split, 42, 0, 0, 1, T, x.data(), y.data());
  CHECK(x != x2);
  // A split of exactly T+1 tokens has one window.
  std::vector<int32_t> tiny(split.begin(), split.begin() + T + 1);
  fill_sequence(tiny, 7, 0, 9, 9, T, x.data(), y.data());
  CHECK(x[0] == 0);
  CHECK(y[T - 1] == T);
  CHECK_THROWS(fill_sequence(std::vector<int32_t>(T), 7, 0, 0, 0, T, x.data(), y.data()));
}

// ---- Megatron indexed datasets, llm.c uint32, loss masks, one-sequence eval files ----------

namespace {

// A Megatron .idx / .bin pair written straight from the format definition
// (megatron/core/datasets/indexed_dataset.py, version 1; one document per sequence), as bytes
// a test can damage before writing.
struct Megatron {
  std::vector<unsigned char> idx, bin;
};

void put_u64(std::vector<unsigned char>& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<unsigned char>(v >> (8 * i)));
}

size_t itemsize(int code) {
  switch (code) {
    case 1: case 2: return 1;
    case 3: case 8: return 2;
    case 4: case 7: return 4;
    default: return 8;  // 5 int64, 6 float64
  }
}

Megatron megatron(const std::vector<std::vector<int64_t>>& docs, int code) {
  Megatron m;
  const size_t item = itemsize(code);
  for (const auto& d : docs)
    for (int64_t t : d)
      for (size_t k = 0; k < item; ++k) m.bin.push_back(static_cast<unsigned char>(static_cast<uint64_t>(t) >> (8 * k)));
  const char magic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
  m.idx.insert(m.idx.end(), magic, magic + 9);
  put_u64(m.idx, 1);                                  // version
  m.idx.push_back(static_cast<unsigned char>(code));  // dtype
  put_u64(m.idx, docs.size());                        // S
  put_u64(m.idx, docs.size() + 1);                    // D
  for (const auto& d : docs) put_i32(m.idx, static_cast<int32_t>(d.size()));
  uint64_t ptr = 0;
  for (const auto& d : docs) {
    put_u64(m.idx, ptr);
    ptr += d.size() * item;
  }
  for (size_t i = 0; i <= docs.size(); ++i) put_u64(m.idx, i);
  return m;
}

void write_megatron(const std::string& prefix, const Megatron& m) {
  write_bytes(prefix + ".idx", m.idx);
  write_bytes(prefix + ".bin", m.bin);
}

std::vector<unsigned char> llmc32_file(const std::vector<uint32_t>& toks, int32_t version = 7) {
  std::vector<unsigned char> b;
  put_i32(b, 20240801);
  put_i32(b, version);
  put_i32(b, static_cast<int32_t>(toks.size()));
  for (int i = 3; i < 256; ++i) put_i32(b, 0);
  for (uint32_t t : toks) put_i32(b, static_cast<int32_t>(t));
  return b;
}

// `fn` must throw a std::exception whose message contains every string of `parts`.
template <class F>
void require_message(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    FAIL("no exception");
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    for (const std::string& p : parts) CHECK(msg.find(p) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("megatron indexed datasets read documents of any length and dtype", "[data]") {
  TempDir d;
  const std::vector<std::vector<int64_t>> docs = {{5, 6, 7, 8, 9}, {1}, {}, {20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31}, {2, 3, 4}};
  std::vector<int32_t> all;
  for (const auto& doc : docs) all.insert(all.end(), doc.begin(), doc.end());
  for (int code : {1, 2, 3, 4, 5, 8}) {
    INFO("dtype code " << code);
    const std::string prefix = d.file("ds" + std::to_string(code) + "_text_document");
    write_megatron(prefix, megatron(docs, code));
    const IndexedDataset ds = read_indexed_dataset(prefix);
    CHECK(ds.dtype_code == code);
    CHECK(ds.tokens == all);
    CHECK(ds.sequence_lengths == std::vector<int32_t>{5, 1, 0, 12, 3});
    const int64_t it = static_cast<int64_t>(itemsize(code));
    CHECK(ds.sequence_pointers == std::vector<int64_t>{0, 5 * it, 6 * it, 6 * it, 18 * it});
    CHECK(ds.document_indices == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
    // PREFIX.bin and PREFIX.idx name the same pair
    CHECK(read_indexed_dataset(prefix + ".bin").tokens == all);
    CHECK(read_indexed_dataset(prefix + ".idx").tokens == all);
  }
  SECTION("load_corpus: --data-format megatron, and auto from the prefix or the .bin") {
    // Llama-3 sized ids need int32 (Megatron's optimal dtype for a vocab >= 65500)
    const std::vector<std::vector<int64_t>> big = {{128000, 9906, 1917}, {128000, 40, 1097, 264, 128001}};
    const std::string prefix = d.file("llama_text_document");
    write_megatron(prefix, megatron(big, 4));
    for (const std::string& path : {prefix, prefix + ".bin", prefix + ".idx"})
      for (const char* fmt : {"auto", "megatron"}) {
        INFO(path << " " << fmt);
        DataOptions opt;
        opt.path = path;
        opt.format = fmt;
        opt.eval_fraction = 0.25;
        const TokenCorpus c = load_corpus(opt);
        CHECK(c.format == "megatron");
        CHECK(c.train == std::vector<int32_t>{128000, 9906, 1917, 128000, 40, 1097});
        CHECK(c.val == std::vector<int32_t>{264, 128001});
        CHECK(c.vocab_size == 128002);
      }
    // a megatron eval set beside another format's training file (auto: each file on its own)
    write_bytes(d.file("train.bin"), llmc32_file({128000, 1, 2, 3, 4}));
    DataOptions opt;
    opt.path = d.file("train.bin");
    opt.eval_path = prefix;
    const TokenCorpus c = load_corpus(opt);
    CHECK(c.format == "llmc");
    CHECK(c.val.size() == 8);
  }
}

TEST_CASE("megatron index errors name the file and the problem", "[data]") {
  TempDir d;
  const std::string prefix = d.file("bad");
  const std::string idx = prefix + ".idx", bin = prefix + ".bin";
  const Megatron good = megatron({{1, 2, 3}, {4, 5}}, 8);
  DataOptions opt;
  opt.path = prefix;
  opt.format = "megatron";
  auto expect = [&](Megatron m, const std::string& file, const std::string& what) {
    write_megatron(prefix, m);
    require_throws_naming(opt, file, what);
  };
  SECTION("bad magic") {
    Megatron m = good;
    m.idx[0] = 'X';
    expect(m, idx, "bad magic");
  }
  SECTION("version") {
    Megatron m = good;
    m.idx[9] = 2;
    expect(m, idx, "unsupported version 2");
  }
  SECTION("float dtypes are not token ids") {
    Megatron m = good;
    m.idx[17] = 7;
    expect(m, idx, "dtype code 7 (float32) holds no token ids");
    m.idx[17] = 6;
    expect(m, idx, "dtype code 6 (float64)");
  }
  SECTION("unknown dtype code") {
    Megatron m = good;
    m.idx[17] = 9;
    expect(m, idx, "unknown dtype code 9");
  }
  SECTION("truncated index") {
    Megatron m = good;
    m.idx.resize(m.idx.size() - 3);
    expect(m, idx, "truncated");
    m.idx.resize(20);
    expect(m, idx, "shorter than the 34-byte header");
  }
  SECTION("a count that overflows the file") {
    Megatron m = good;
    for (int k = 18; k < 26; ++k) m.idx[k] = 0xff;  // S = 2^64 - 1
    expect(m, idx, "truncated");
  }
  SECTION("trailing bytes in the index") {
    Megatron m = good;
    m.idx.insert(m.idx.end(), 5, 0);
    expect(m, idx, "size mismatch");
  }
  SECTION("pointer beyond the .bin") {
    Megatron m = good;
    m.bin.resize(6);  // the second sequence (4 bytes at byte 6) is gone
    expect(m, idx, "lies beyond the end of " + bin);
  }
  SECTION("pointers inconsistent with the lengths") {
    Megatron m = good;
    m.idx[34 + 4 * 2 + 8] = 4;  // second pointer 4 instead of 6
    expect(m, idx, "starts at byte 4, expected 6");
  }
  SECTION("trailing bytes in the .bin") {
    Megatron m = good;
    m.bin.push_back(0);
    m.bin.push_back(0);
    expect(m, bin, "has 12 bytes but");
  }
  SECTION("document indices") {
    Megatron m = good;
    m.idx[m.idx.size() - 8] = 1;  // last document index 1, not S = 2
    expect(m, idx, "document_indices end at 1");
  }
  SECTION("negative token ids") {
    write_megatron(prefix, megatron({{1, -3, 2}}, 3));
    require_throws_naming(opt, bin, "negative");
  }
  SECTION("a missing pair") {
    opt.path = d.file("nothing");
    require_throws_naming(opt, opt.path, "--data-path takes the prefix");
    write_bytes(d.file("half.bin"), {1, 0});
    opt.path = d.file("half");
    require_throws_naming(opt, opt.path + ".idx", "does not exist");
  }
}

TEST_CASE("llm.c uint32 token files (magic 20240801, version 7)", "[data]") {
  TempDir d;
  const std::vector<uint32_t> toks = {128000, 9906, 11, 1917, 0, 128255};
  write_bytes(d.file("fw_train_000001.bin"), llmc32_file(toks));
  DataOptions opt;
  opt.path = d.file("fw_train_000001.bin");
  opt.eval_fraction = 0.5;
  for (const char* fmt : {"auto", "llmc"}) {
    opt.format = fmt;
    const TokenCorpus c = load_corpus(opt);
    CHECK(c.format == "llmc");
    CHECK(c.train == std::vector<int32_t>{128000, 9906, 11});
    CHECK(c.val == std::vector<int32_t>{1917, 0, 128255});
    CHECK(c.vocab_size == 128256);
  }
  opt.format = "auto";
  SECTION("version 1 with the uint32 magic") {
    write_bytes(opt.path, llmc32_file(toks, 1));
    require_throws_naming(opt, opt.path, "unsupported llm.c header version 1");
  }
  SECTION("uint16-sized payload under a uint32 header") {
    std::vector<unsigned char> b = llmc32_file(toks);
    b.resize(1024 + 2 * toks.size());
    write_bytes(opt.path, b);
    require_throws_naming(opt, opt.path, "size mismatch");
  }
  SECTION("an id beyond int32") {
    write_bytes(opt.path, llmc32_file({1, 2, 0x80000000u, 3}));
    require_throws_naming(opt, opt.path, "2147483648");
  }
}

TEST_CASE("token ids beyond the vocabulary name the file, the id and the vocab", "[data]") {
  TokenCorpus c;
  c.format = "uint16";
  c.train_file = c.val_file = "/data/a.bin";
  c.train = {1, 2, 3, 4};
  c.val = {5, 70, 6};
  CHECK_NOTHROW(check_vocab(c, 71));
  require_message([&] { check_vocab(c, 64); },
                  {"/data/a.bin", "token id 70", "position 5", "--vocab-size is 64", "ids 0..63"});
  c.val_file = "/data/v.bin";  // a separate eval file: positions in it
  require_message([&] { check_vocab(c, 64); }, {"/data/v.bin", "token id 70", "position 1"});
  c.train[2] = 99;
  require_message([&] { check_vocab(c, 64); }, {"/data/a.bin", "token id 99", "position 2"});
}

TEST_CASE("an eval file of exactly one sequence is valid", "[data]") {
  TempDir d;
  const int T = 8;
  std::vector<uint16_t> tr, va;
  for (int i = 0; i < 100; ++i) tr.push_back(static_cast<uint16_t>(i % 50));
  for (int i = 0; i < T + 1; ++i) va.push_back(static_cast<uint16_t>(100 + i));
  write_bytes(d.file("train.bin"), llmc_file(tr));
  write_bytes(d.file("val.bin"), llmc_file(va));
  DataOptions opt;
  opt.path = d.file("train.bin");
  opt.eval_path = d.file("val.bin");
  const TokenCorpus c = load_corpus(opt);
  CHECK_NOTHROW(check_sequences(c, T));
  CHECK_THROWS_WITH(check_sequences(c, T + 1), Catch::Contains("9 eval tokens"));
  std::vector<int32_t> x(T), y(T);
  for (int64_t it = 0; it < 5; ++it)
    for (int64_t s = 0; s < 4; ++s) {
      fill_sequence(c.val, c.val_mask, 1, 1, it, s, T, x.data(), y.data());
      for (int t = 0; t < T; ++t) {
        REQUIRE(x[t] == 100 + t);
        REQUIRE(y[t] == 101 + t);
      }
    }
}

TEST_CASE("loss masks: one uint8 per token, split with the tokens, -1 targets", "[data]") {
  TempDir d;
  std::vector<uint16_t> toks;
  std::vector<unsigned char> mask;
  for (int i = 0; i < 200; ++i) {
    toks.push_back(static_cast<uint16_t>(i));
    mask.push_back(static_cast<unsigned char>((i % 10) >= 6));  // 4 of every 10 are targets
  }
  write_bytes(d.file("sft.bin"), llmc_file(toks));
  write_bytes(d.file("sft.mask"), mask);
  DataOptions opt;
  opt.path = d.file("sft.bin");
  opt.loss_mask = d.file("sft.mask");
  opt.eval_fraction = 0.25;
  const TokenCorpus c = load_corpus(opt);
  REQUIRE(c.train.size() == 150);
  REQUIRE(c.train_mask.size() == 150);
  REQUIRE(c.val_mask.size() == 50);
  CHECK(std::equal(c.val_mask.begin(), c.val_mask.end(), mask.begin() + 150));

  const int T = 16;
  std::vector<int32_t> x(T), y(T), x0(T), y0(T);
  for (int64_t it = 0; it < 20; ++it) {
    int64_t counted = 0;
    for (int64_t s = 0; s < 6; ++s) {
      fill_sequence(c.train, c.train_mask, 3, 0, it, s, T, x.data(), y.data());
      fill_sequence(c.train, 3, 0, it, s, T, x0.data(), y0.data());
      REQUIRE(x == x0);  // the same window: the mask changes only the targets
      for (int t = 0; t < T; ++t) {
        const bool target = (y0[t] % 10) >= 6;
        REQUIRE(y[t] == (target ? y0[t] : -1));
        counted += target;
      }
    }
    CHECK(count_targets(c.train.size(), c.train_mask, 3, 0, it, 6, T) == counted);
    CHECK(count_targets(c.train.size(), {}, 3, 0, it, 6, T) == 6 * T);
  }

  SECTION("a mask of another length") {
    write_bytes(d.file("short.mask"), std::vector<unsigned char>(199, 1));
    opt.loss_mask = d.file("short.mask");
    require_throws_naming(opt, opt.loss_mask, "has 199 bytes but data " + opt.path + " has 200 tokens");
  }
  SECTION("a byte other than 0 or 1") {
    std::vector<unsigned char> m = mask;
    m[17] = 2;
    write_bytes(d.file("two.mask"), m);
    opt.loss_mask = d.file("two.mask");
    require_throws_naming(opt, opt.loss_mask, "byte 17 is 2");
  }
  SECTION("nothing to learn") {
    std::vector<unsigned char> m(200, 0);
    m[199] = 1;  // only in the eval tail
    write_bytes(d.file("zero.mask"), m);
    opt.loss_mask = d.file("zero.mask");
    require_throws_naming(opt, opt.loss_mask, "no 1 in the training split");
  }
  SECTION("separate eval file and mask") {
    write_bytes(d.file("val.bin"), llmc_file({1, 2, 3, 4}));
    write_bytes(d.file("val.mask"), {0, 0, 1, 1});
    opt.eval_path = d.file("val.bin");
    opt.eval_loss_mask = d.file("val.mask");
    const TokenCorpus e = load_corpus(opt);
    CHECK(e.train_mask.size() == 200);
    CHECK(e.val_mask == std::vector<uint8_t>{0, 0, 1, 1});
    write_bytes(d.file("val3.mask"), {0, 1, 1});
    opt.eval_loss_mask = d.file("val3.mask");
    require_throws_naming(opt, opt.eval_loss_mask, "has 4 tokens");
  }
  SECTION("an eval mask without an eval file") {
    opt.eval_loss_mask = d.file("sft.mask");
    require_throws_naming(opt, opt.eval_loss_mask, "needs --eval-data");
  }
  SECTION("a missing mask") {
    opt.loss_mask = d.file("nope.mask");
    require_throws_naming(opt, "loss mask " + opt.loss_mask, "does not exist");
  }
}
