// safetensors (experiments/safetensors.h): F32/BF16 round trips through write_file, F16/BF16/F64
// files built byte by byte here (so the reader is not only checked against our own writer), every
// header check of the reference reader, and sharded checkpoint directories.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "experiments/safetensors.h"

using namespace lossytp;
using namespace lossytp::safetensors;
namespace fs = std::filesystem;
using Catch::Contains;
using namespace std::string_literals;

namespace {

std::string tmpdir(const std::string& tag) {
  const fs::path p = fs::temp_directory_path() / ("lossytp-st-" + tag + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// A file of the 8-byte length of `header`, `header`, then `data` (all as given, nothing checked).
void write_raw(const std::string& path, const std::string& header, const std::string& data, uint64_t claimed_len = UINT64_MAX) {
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = claimed_len == UINT64_MAX ? header.size() : claimed_len;
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  f.write(reinterpret_cast<const char*>(len), 8);
  f << header << data;
  REQUIRE(f.good());
}

template <class T>
std::string le_bytes(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}

uint32_t bits_of(float x) { return std::bit_cast<uint32_t>(x); }

// Independent bf16 rounding: the two bf16 neighbours of x (truncation toward zero and the next
// one away from zero; past the largest finite bf16 that is infinity, valued 2^128 as IEEE's
// unbounded-exponent rounding does), whichever is nearer in double; a tie goes to the even one.
uint16_t bf16_reference(float x) {
  if (std::isnan(x)) return 0x7FC0;  // only NaN-ness is compared
  const uint32_t u = bits_of(x);
  const uint32_t lo = u & 0xFFFF0000u, hi = lo + 0x10000u;  // same sign, magnitude up one ulp
  if (lo == u) return static_cast<uint16_t>(u >> 16);
  auto value = [](uint32_t b) {
    if ((b & 0x7FFFFFFFu) == 0x7F800000u) return std::copysign(std::ldexp(1.0, 128), static_cast<double>(std::bit_cast<float>(b)));
    return static_cast<double>(std::bit_cast<float>(b));
  };
  const double dx = x, dlo = std::abs(dx - value(lo)), dhi = std::abs(value(hi) - dx);
  if (dlo < dhi) return static_cast<uint16_t>(lo >> 16);
  if (dhi < dlo) return static_cast<uint16_t>(hi >> 16);
  return static_cast<uint16_t>(((lo >> 16) & 1u) ? hi >> 16 : lo >> 16);
}

// One tensor's header entry.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t b, uint64_t e) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(b) +
         "," + std::to_string(e) + "]}";
}

// File(path) throws, naming the path and `problem`.
void require_refused(const std::string& path, const std::string& problem) {
  INFO(path << ": expecting " << problem);
  REQUIRE_THROWS_WITH(File(path), Catch::StartsWith(path + ": ") && Contains(problem));
}

}  // namespace

TEST_CASE("safetensors F32 round trip: order, offsets, padding, metadata, exact values", "[safetensors]") {
  const std::string d = tmpdir("f32");
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> w = {1.5f, -0.0f, inf, -inf, nan, 1e-45f, 3.4028235e38f, -7.25f, 0.1f, 2.0f, 3.0f, 4.0f};
  std::vector<float> b = {9.0f, 8.0f, 7.0f};
  float s = 42.0f;
  const std::vector<NamedTensor> ts = {
      {"z.weight", {3, 4}, w.data()}, {"a.bias", {3}, b.data()}, {"scalar", {}, &s}, {"empty", {0, 5}, nullptr}};
  const std::string path = d + "/m.safetensors";
  write_file(path, ts, DType::F32, {{"format", "pt"}});
  CHECK_FALSE(fs::exists(path + ".tmp"));

  File f(path);
  const Header& h = f.header();
  CHECK(h.metadata == std::map<std::string, std::string>{{"format", "pt"}});
  CHECK(h.data_start % 8 == 0);
  REQUIRE(h.tensors.size() == 4);
  // Ordered by name, tiled contiguously; the empty one holds no bytes.
  std::vector<std::string> names;
  uint64_t at = 0;
  for (const TensorInfo& t : h.tensors) {
    names.push_back(t.name);
    CHECK(t.dtype == "F32");
    CHECK(t.begin == at);
    CHECK(t.end - t.begin == static_cast<uint64_t>(t.numel()) * 4);
    at = t.end;
  }
  CHECK(names == std::vector<std::string>{"a.bias", "empty", "scalar", "z.weight"});
  CHECK(fs::file_size(path) == h.data_start + at);

  const TensorInfo* tw = f.find("z.weight");
  REQUIRE(tw);
  CHECK(tw->shape == std::vector<int64_t>{3, 4});
  const std::vector<float> rw = f.read_float(*tw);
  REQUIRE(rw.size() == w.size());
  for (size_t i = 0; i < w.size(); ++i) CHECK(bits_of(rw[i]) == bits_of(w[i]));
  CHECK(f.read_float(*f.find("a.bias")) == b);
  CHECK(f.read_float(*f.find("scalar")) == std::vector<float>{42.0f});
  CHECK(f.find("scalar")->shape.empty());
  CHECK(f.find("scalar")->numel() == 1);
  CHECK(f.read_float(*f.find("empty")).empty());
  CHECK(f.find("nope") == nullptr);

  // Without metadata there is no __metadata__ key at all.
  write_file(d + "/nometa.safetensors", {{"x", {1}, &s}}, DType::F32, {});
  std::ifstream in(d + "/nometa.safetensors", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), {});
  CHECK(all.find("__metadata__") == std::string::npos);
  CHECK(File(d + "/nometa.safetensors").header().metadata.empty());
  fs::remove_all(d);
}

TEST_CASE("safetensors BF16 write rounds to nearest even, as an independent reference", "[safetensors]") {
  const std::string d = tmpdir("bf16");
  std::vector<float> v;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  for (int i = 0; i < 2000; ++i) v.push_back(u(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 60) - 30));
  // Ties (exactly half an ulp) with even and odd kept parts, just above/below a tie, subnormals,
  // values that round up into the next binade or to infinity, infinities, zeros, NaN.
  for (uint32_t bits : {0x3F808000u, 0x3F818000u, 0x3F808001u, 0x3F807FFFu, 0x00008000u, 0x00018000u, 0x00000001u,
                        0x807FFFFFu, 0x3FFFFFFFu, 0x7F7F7FFFu, 0x7F7F8000u, 0x7F7FFFFFu, 0xFF7F8000u, 0x7F800000u,
                        0xFF800000u, 0x00000000u, 0x80000000u, 0x7FC00000u, 0xFFC00001u, 0x7F800001u})
    v.push_back(std::bit_cast<float>(bits));
  // A 2-D shape crossing the writer's conversion chunk (65536 elements).
  std::vector<float> big(70001);
  for (size_t i = 0; i < big.size(); ++i) big[i] = std::sin(static_cast<float>(i)) * 1000.0f;
  const std::string path = d + "/b.safetensors";
  write_file(path, {{"v", {static_cast<int64_t>(v.size())}, v.data()}, {"big", {7, 10000}, big.data()}},
             DType::BF16, {{"format", "pt"}});
  File f(path);
  CHECK(f.find("v")->dtype == "BF16");
  CHECK(f.find("v")->end - f.find("v")->begin == 2 * v.size());
  const std::vector<float> r = f.read_float(*f.find("v"));
  REQUIRE(r.size() == v.size());
  int nans = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    INFO("value bits 0x" << std::hex << bits_of(v[i]));
    if (std::isnan(v[i])) {
      CHECK(std::isnan(r[i]));
      ++nans;
      continue;
    }
    CHECK((bits_of(r[i]) & 0xFFFFu) == 0u);
    CHECK((bits_of(r[i]) >> 16) == bf16_reference(v[i]));
  }
  CHECK(nans == 3);
  const std::vector<float> rb = f.read_float(*f.find("big"));
  REQUIRE(rb.size() == 70000);  // the first 70000 values ({7, 10000})
  for (size_t i = 0; i < rb.size(); ++i)
    if ((bits_of(rb[i]) >> 16) != bf16_reference(big[i])) FAIL("big[" << i << "]");
  fs::remove_all(d);
}

TEST_CASE("safetensors reads hand-built F16, BF16, F64 files; I64 validates but is not read", "[safetensors]") {
  const std::string d = tmpdir("dtypes");
  const std::vector<uint16_t> h16 = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x7C00, 0xFC00, 0x7E00, 0x8000, 0x3555};
  const std::vector<uint16_t> b16 = {0x3F80, 0xC040, 0x7F80, 0x0001, 0x7F7F, 0xFFC0};
  const std::vector<double> f64 = {1.5, -1e300, 1e-50, 0.1, std::nan(""), 1e300};
  const std::vector<int64_t> i64 = {1, -2};
  // Stored in an order different from the header's (I64 first) and from the names'.
  std::string data = le_bytes(i64);
  const uint64_t a = data.size();
  data += le_bytes(h16);
  const uint64_t b = data.size();
  data += le_bytes(b16);
  const uint64_t c = data.size();
  data += le_bytes(f64);
  const std::string header = "{" + entry("half", "F16", "[2,5]", a, b) + "," + entry("brain", "BF16", "[6]", b, c) + "," +
                             entry("dbl", "F64", "[3,1,2]", c, data.size()) + "," + entry("ids", "I64", "[2]", 0, a) +
                             ",\"__metadata__\":{\"format\":\"pt\",\"note\":\"\\u00e9\"}}";
  const std::string path = d + "/d.safetensors";
  write_raw(path, header, data);
  File f(path);
  CHECK(f.header().data_start == 8 + header.size());
  CHECK(f.header().metadata.at("note") == "\xc3\xa9");
  REQUIRE(f.header().tensors.size() == 4);
  CHECK(f.header().tensors[0].name == "ids");  // in data order

  const std::vector<float> h = f.read_float(*f.find("half"));
  REQUIRE(h.size() == 10);
  CHECK(h[0] == 1.0f);
  CHECK(h[1] == -2.0f);
  CHECK(h[2] == 65504.0f);
  CHECK(h[3] == std::ldexp(1.0f, -24));  // smallest subnormal half
  CHECK(h[4] == std::ldexp(1023.0f, -24));  // largest subnormal half
  CHECK(h[5] == std::numeric_limits<float>::infinity());
  CHECK(h[6] == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(h[7]));
  CHECK((h[8] == 0.0f && std::signbit(h[8])));
  CHECK(h[9] == 0x1.554p-2f);  // 0.333251953125

  const std::vector<float> bf = f.read_float(*f.find("brain"));
  REQUIRE(bf.size() == 6);
  CHECK(bf[0] == 1.0f);
  CHECK(bf[1] == -3.0f);
  CHECK(bf[2] == std::numeric_limits<float>::infinity());
  CHECK(bf[3] == std::ldexp(1.0f, -133));  // smallest subnormal bf16
  CHECK(bf[4] == 0x1.FEp127f);            // largest finite bf16
  CHECK(std::isnan(bf[5]));

  const std::vector<float> db = f.read_float(*f.find("dbl"));
  REQUIRE(db.size() == 6);
  CHECK(db[0] == 1.5f);
  CHECK(db[1] == -std::numeric_limits<float>::infinity());
  CHECK(db[2] == 0.0f);
  CHECK(db[3] == 0.1f);
  CHECK(std::isnan(db[4]));
  CHECK(db[5] == std::numeric_limits<float>::infinity());

  CHECK(f.find("ids")->numel() == 2);
  REQUIRE_THROWS_WITH(f.read_float(*f.find("ids")), Contains(path) && Contains("'ids'") && Contains("I64"));
  fs::remove_all(d);
}

TEST_CASE("safetensors header checks name the file and the problem", "[safetensors]") {
  const std::string d = tmpdir("bad");
  const std::string f16 = std::string(16, '\1');
  int k = 0;
  auto file = [&](const std::string& header, const std::string& data, uint64_t claimed = UINT64_MAX) {
    const std::string p = d + "/bad" + std::to_string(k++) + ".safetensors";
    write_raw(p, header, data, claimed);
    return p;
  };
  const std::string ok = "{" + entry("x", "F32", "[2,2]", 0, 16) + "}";
  CHECK_NOTHROW(File(file(ok, f16)));

  {  // shorter than the length field
    const std::string p = d + "/short.safetensors";
    std::ofstream(p, std::ios::binary) << "abcde";
    require_refused(p, "file holds 5 bytes, too few for the 8-byte header length");
  }
  require_refused(file(ok, f16, 4096), "header claims 4096 bytes but the file holds " + std::to_string(ok.size() + 16));
  require_refused(file(ok, f16, 200'000'000), "header length 200000000 exceeds the limit of 100000000 bytes");
  require_refused(file(ok, f16, UINT64_MAX - 3), "exceeds the limit");
  // The data shorter (truncated) or longer (trailing bytes) than the tensors.
  require_refused(file(ok, std::string(12, '\1')), "tensors need 16 bytes of data but the file holds 12");
  require_refused(file(ok, f16 + std::string(8, '\0')), "file has 8 trailing bytes after the last tensor");
  require_refused(file(ok + "    ", f16 + "x"), "file has 1 trailing bytes");
  // Offsets that lie about the size.
  require_refused(file("{" + entry("x", "F32", "[2,2]", 0, 12) + "}", std::string(12, '\1')),
                  "tensor 'x' data_offsets [0, 12] hold 12 bytes, its F32 shape [2, 2] needs 16");
  require_refused(file("{" + entry("x", "F32", "[2,2]", 8, 4) + "}", f16), "end before begin");
  // Tiling: a gap, an overlap, a buffer not starting at 0.
  require_refused(file("{" + entry("a", "F32", "[4]", 0, 16) + "," + entry("b", "F32", "[4]", 20, 36) + "}", std::string(36, '\1')),
                  "tensors do not tile the data buffer: gap at byte 16");
  require_refused(file("{" + entry("a", "F32", "[4]", 8, 24) + "}", std::string(24, '\1')),
                  "tensors do not tile the data buffer: gap at byte 0");
  require_refused(file("{" + entry("a", "F32", "[4]", 0, 16) + "," + entry("b", "F32", "[4]", 8, 24) + "}", std::string(24, '\1')),
                  "tensor 'b' at byte 8 overlaps the previous tensor, which ends at byte 16");
  require_refused(file("{" + entry("a", "F32", "[4]", 0, 16) + "," + entry("b", "F32", "[4]", 0, 16) + "}", f16), "overlaps");
  // Names, dtypes, shapes.
  require_refused(file("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("a", "F32", "[2]", 8, 16) + "}", f16),
                  "header has the key 'a' twice");
  require_refused(file("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", f16),
                  "has the key 'dtype' twice");
  require_refused(file("{" + entry("x", "F128", "[1]", 0, 16) + "}", f16), "tensor 'x' has unknown dtype 'F128'");
  require_refused(file("{\"x\":{\"dtype\":32,\"shape\":[4],\"data_offsets\":[0,16]}}", f16), "dtype that is not a string");
  require_refused(file("{" + entry("x", "F32", "[-1,2]", 0, 16) + "}", f16), "every dimension must be an integer >= 0");
  require_refused(file("{" + entry("x", "F32", "[4.0]", 0, 16) + "}", f16), "every dimension must be an integer >= 0");
  require_refused(file("{" + entry("x", "F32", "[9223372036854775808]", 0, 16) + "}", f16), "every dimension must be an integer >= 0");
  require_refused(file("{" + entry("x", "F32", "[99999999999999999999]", 0, 16) + "}", f16), "every dimension must be an integer >= 0");
  require_refused(file("{" + entry("x", "F32", "4", 0, 16) + "}", f16), "shape that is not an array");
  require_refused(file("{" + entry("x", "F32", "[4294967296,4294967296,2]", 0, 16) + "}", f16), "byte size overflows 64 bits");
  require_refused(file("{" + entry("x", "F32", "[4611686018427387904]", 0, 16) + "}", f16), "byte size overflows 64 bits");
  require_refused(file("{" + entry("x", "F4", "[3]", 0, 16) + "}", f16), "not a whole number of bytes");
  require_refused(file("{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,-16]}}", f16), "need [begin, end], integers >= 0");
  require_refused(file("{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16,16]}}", f16), "need [begin, end]");
  require_refused(file("{\"x\":{\"dtype\":\"F32\",\"shape\":[4]}}", f16), "tensor 'x' has no data_offsets");
  require_refused(file("{\"x\":[1,2]}", f16), "tensor 'x' is not an object");
  // JSON: not an object, invalid, __metadata__ not a map of strings.
  require_refused(file("[1, 2]", f16), "header is not a JSON object");
  require_refused(file(" {}", f16), "header is not a JSON object");
  require_refused(file("", ""), "header is not a JSON object");
  require_refused(file("{\"x\": ", f16), "header is not valid JSON");
  require_refused(file(ok + "}", f16), "header is not valid JSON");
  // nlohmann stops at a NUL byte: what follows must not be ignored.
  require_refused(file("{}\0\xff junk"s, ""), "header holds a NUL byte at byte 10");
  require_refused(file("{\"__metadata__\":{\"a\":\"b\0\"}}"s, ""), "NUL byte");
  require_refused(file("{\"__metadata__\":{\"format\":1}}", ""), "__metadata__ is not a map of strings to strings");
  require_refused(file("{\"__metadata__\":[\"pt\"]}", ""), "__metadata__ is not a map of strings to strings");
  require_refused(file("{\"__metadata__\":{\"a\":\"b\",\"a\":\"c\"}}", ""), "has the key 'a' twice");
  // Valid edge cases: no tensors; zero-size tensors anywhere; a null __metadata__; space padding.
  CHECK(File(file("{}", "")).header().tensors.empty());
  CHECK(File(file("{\"__metadata__\":null}    ", "")).header().metadata.empty());
  CHECK(File(file("{" + entry("e", "I8", "[0]", 0, 0) + "," + entry("x", "F32", "[2,2]", 0, 16) + "," +
                  entry("y", "BOOL", "[3,0]", 16, 16) + "}",
                  f16))
            .header()
            .tensors.size() == 3);
  // Not a file at all.
  require_refused(d + "/missing.safetensors", "cannot be opened");
  require_refused(d, "is not a regular file");
  // parse_header on memory: the same checks, named by `where`.
  const std::string mem = std::string("\x02\0\0\0\0\0\0\0{}", 10);
  CHECK(parse_header(reinterpret_cast<const unsigned char*>(mem.data()), mem.size(), mem.size(), "mem").data_start == 10);
  CHECK_THROWS_WITH(parse_header(reinterpret_cast<const unsigned char*>(mem.data()), mem.size(), mem.size() + 4, "mem"),
                    Catch::StartsWith("mem: file has 4 trailing bytes"));
  fs::remove_all(d);
}

TEST_CASE("safetensors checkpoint directories: single file, shards with an index, their errors", "[safetensors]") {
  const std::string d = tmpdir("ckpt");
  std::vector<float> a = {1, 2, 3, 4}, b = {5, 6}, c = {7};
  const std::map<std::string, std::string> pt = {{"format", "pt"}};

  SECTION("single file") {
    write_file(d + "/model.safetensors", {{"b", {2}, b.data()}, {"a", {2, 2}, a.data()}}, DType::F32, pt);
    Checkpoint ck(d);
    CHECK(ck.names() == std::vector<std::string>{"a", "b"});
    CHECK(ck.has("a"));
    CHECK_FALSE(ck.has("c"));
    CHECK(ck.info("a").shape == std::vector<int64_t>{2, 2});
    CHECK(ck.read_float("b") == b);
    CHECK_THROWS_WITH(ck.info("c"), Catch::StartsWith(d + ": ") && Contains("no tensor 'c'"));
    CHECK_THROWS_WITH(ck.read_float("c"), Contains("no tensor 'c'"));
  }
  SECTION("shards listed by an index") {
    write_file(d + "/model-00001-of-00002.safetensors", {{"a", {2, 2}, a.data()}, {"c", {}, c.data()}}, DType::BF16, pt);
    write_file(d + "/model-00002-of-00002.safetensors", {{"b", {2}, b.data()}}, DType::F32, pt);
    const std::string index = d + "/model.safetensors.index.json";
    auto write_index = [&](const std::string& text) { std::ofstream(index) << text; };
    const std::string good =
        "{\"metadata\": {\"total_size\": 18}, \"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", "
        "\"b\": \"model-00002-of-00002.safetensors\", \"c\": \"model-00001-of-00002.safetensors\"}}";
    write_index(good);
    {
      Checkpoint ck(d);
      CHECK(ck.names() == std::vector<std::string>{"a", "b", "c"});
      CHECK(ck.read_float("a") == a);  // small integers are exact in bf16
      CHECK(ck.read_float("b") == b);
      CHECK(ck.read_float("c") == c);
      CHECK(ck.info("a").dtype == "BF16");
      CHECK(ck.info("c").shape.empty());
    }
    // A model.safetensors next to the index wins, as in transformers' from_pretrained.
    write_file(d + "/model.safetensors", {{"zzz", {1}, c.data()}}, DType::F32, pt);
    CHECK(Checkpoint(d).names() == std::vector<std::string>{"zzz"});
    std::filesystem::remove(d + "/model.safetensors");

    write_index("{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"b\": \"model-00003-of-00003.safetensors\"}}");
    CHECK_THROWS_WITH(Checkpoint(d), Catch::StartsWith(index + ": ") && Contains("names shard 'model-00003-of-00003.safetensors'") &&
                                         Contains("does not exist"));
    write_index("{\"weight_map\": {\"a\": \"model-00002-of-00002.safetensors\", \"b\": \"model-00002-of-00002.safetensors\"}}");
    CHECK_THROWS_WITH(Checkpoint(d), Contains("assigns tensor 'a' to shard 'model-00002-of-00002.safetensors', which does not hold it"));
    write_index("{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"b\": \"model-00002-of-00002.safetensors\"}}");
    CHECK_THROWS_WITH(Checkpoint(d), Contains("shard 'model-00001-of-00002.safetensors' holds tensor 'c', which the index does not assign"));
    write_index("{\"weight_map\": {\"a\": \"../model-00001-of-00002.safetensors\"}}");
    CHECK_THROWS_WITH(Checkpoint(d), Contains("not a file name"));
    write_index("{\"weight_map\": {\"a\": 3}}");
    CHECK_THROWS_WITH(Checkpoint(d), Contains("not a file name"));
    write_index("{\"metadata\": {}}");
    CHECK_THROWS_WITH(Checkpoint(d), Catch::StartsWith(index + ": ") && Contains("weight_map"));
    write_index("{\"weight_map\": {\"a\": \"x\",}");
    CHECK_THROWS_WITH(Checkpoint(d), Catch::StartsWith(index + ": ") && Contains("not valid JSON"));
    write_index(good.substr(0, good.size() - 2) + ", \"a\": \"model-00001-of-00002.safetensors\"}}");
    CHECK_THROWS_WITH(Checkpoint(d), Contains("has the key 'a' twice"));
    // A bad shard is named by its own path.
    write_index(good);
    std::ofstream(d + "/model-00002-of-00002.safetensors", std::ios::app) << "junk";
    CHECK_THROWS_WITH(Checkpoint(d), Catch::StartsWith(d + "/model-00002-of-00002.safetensors: ") && Contains("trailing bytes"));
  }
  SECTION("no checkpoint") {
    CHECK_THROWS_WITH(Checkpoint(d), Catch::StartsWith(d + ": ") && Contains("model.safetensors") &&
                                         Contains("model.safetensors.index.json"));
    CHECK_THROWS_WITH(Checkpoint(d + "/nope"), Contains("no such checkpoint directory"));
    std::ofstream(d + "/file") << "x";
    CHECK_THROWS_WITH(Checkpoint(d + "/file"), Contains("is not a directory"));
  }
  fs::remove_all(d);
}

TEST_CASE("safetensors write_file failures leave no partial file", "[safetensors]") {
  const std::string d = tmpdir("wfail");
  float x = 1.0f;
  const std::string missing = d + "/no/such/dir/m.safetensors";
  CHECK_THROWS_WITH(write_file(missing, {{"x", {1}, &x}}, DType::F32, {}),
                    Catch::StartsWith(missing + ": ") && Contains("No such file or directory"));
  CHECK_FALSE(fs::exists(missing + ".tmp"));
  // Refused before anything is written: an existing file is left as it was.
  const std::string p = d + "/m.safetensors";
  write_file(p, {{"x", {1}, &x}}, DType::F32, {});
  CHECK_THROWS_WITH(write_file(p, {{"x", {1}, &x}, {"x", {1}, &x}}, DType::F32, {}), Contains("two tensors are named 'x'"));
  CHECK_THROWS_WITH(write_file(p, {{"__metadata__", {1}, &x}}, DType::F32, {}), Contains("__metadata__"));
  CHECK_THROWS_WITH(write_file(p, {{"y", {-1}, &x}}, DType::F32, {}), Contains("bad shape [-1]"));
  CHECK_THROWS_WITH(write_file(p, {{"y", {2}, nullptr}}, DType::F32, {}), Contains("has no data"));
  CHECK_THROWS_WITH(write_file(p, {{"\xff", {1}, &x}}, DType::F32, {}), Catch::StartsWith(p + ": "));
  CHECK_FALSE(fs::exists(p + ".tmp"));
  const File f(p);
  CHECK(f.read_float(*f.find("x")) == std::vector<float>{1.0f});
  fs::remove_all(d);
}
