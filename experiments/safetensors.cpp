// safetensors reader and writer (experiments/safetensors.h). The checks follow the reference
// reader (huggingface/safetensors, tensor.rs Metadata::validate); every error names the file.
#include "experiments/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "kernels/bf16.h"

static_assert(std::endian::native == std::endian::little, "safetensors data are little-endian");

namespace lossytp::safetensors {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr uint64_t kMaxHeader = 100'000'000;  // the reference reader's MAX_HEADER_SIZE
constexpr const char* kSingle = "model.safetensors";
constexpr const char* kIndex = "model.safetensors.index.json";

[[noreturn]] void fail(const std::string& where, const std::string& problem) {
  throw std::runtime_error(where + ": " + problem);
}

// Bits per element of every dtype the format defines (tensor.rs enum Dtype); 0 when unknown.
int dtype_bits(const std::string& d) {
  static const std::map<std::string, int> bits = {
      {"BOOL", 8},     {"F4", 4},          {"F6_E2M3", 6},     {"F6_E3M2", 6},    {"U8", 8},
      {"I8", 8},       {"F8_E5M2", 8},     {"F8_E4M3", 8},     {"F8_E8M0", 8},    {"F8_E4M3FNUZ", 8},
      {"F8_E5M2FNUZ", 8}, {"I16", 16},     {"U16", 16},        {"F16", 16},       {"BF16", 16},
      {"I32", 32},     {"U32", 32},        {"F32", 32},        {"C64", 64},       {"F64", 64},
      {"I64", 64},     {"U64", 64}};
  auto it = bits.find(d);
  return it == bits.end() ? 0 : it->second;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// JSON text parsed with duplicate keys refused at every level (nlohmann keeps the last one
// silently; the reference reader refuses them).
json parse_json(const char* begin, const char* end, const std::string& where, const std::string& what) {
  std::vector<std::set<std::string>> keys;
  auto cb = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == json::parse_event_t::key) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.empty() && !keys.back().insert(k).second) fail(where, what + " has the key '" + k + "' twice");
    }
    return true;
  };
  try {
    return json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    fail(where, what + " is not valid JSON: " + e.what());
  }
}

// A JSON number that is an integer >= 0 and <= max, or nullopt-like failure via `ok`.
bool as_u64(const json& v, uint64_t max, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {  // a signed integer: only -0 is acceptable
    const int64_t s = v.get<int64_t>();
    if (s < 0) return false;
    out = static_cast<uint64_t>(s);
  } else {
    return false;
  }
  return out <= max;
}

// Reads exactly n bytes at offset off (EINTR and short reads retried).
void pread_all(int fd, unsigned char* buf, size_t n, uint64_t off, const std::string& path) {
  while (n > 0) {
    const ssize_t r = ::pread(fd, buf, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(path, std::string("read failed: ") + std::strerror(errno));
    if (r == 0) fail(path, "file ended early (was it changed while being read?)");
    buf += r;
    off += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Opens a regular file for reading; its size.
uint64_t open_regular(Fd& f, const std::string& path) {
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) fail(path, std::string("cannot be opened: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) fail(path, std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(path, "is not a regular file");
  return static_cast<uint64_t>(st.st_size);
}

// IEEE half bits -> float, exactly (subnormals, infinities, NaN payloads kept).
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h >> 15) << 31;
  const uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in fp32.
    const float m = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -m : m;
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) throw std::overflow_error("tensor '" + name + "': bad shape " + shape_str(shape));
  return n;
}

Header parse_header(const unsigned char* data, size_t size, uint64_t file_size, const std::string& where) {
  if (file_size < 8) fail(where, "file holds " + std::to_string(file_size) + " bytes, too few for the 8-byte header length");
  if (size < 8) fail(where, "only " + std::to_string(size) + " bytes given to parse_header");
  uint64_t n = 0;
  std::memcpy(&n, data, 8);
  if (n > kMaxHeader)
    fail(where, "header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeader) + " bytes");
  if (n > file_size - 8)
    fail(where, "header claims " + std::to_string(n) + " bytes but the file holds " + std::to_string(file_size - 8) +
                    " after the 8-byte length");
  if (size - 8 < n) fail(where, "only " + std::to_string(size) + " bytes given to parse_header, the header needs " + std::to_string(8 + n));
  const char* text = reinterpret_cast<const char*>(data + 8);
  if (n == 0 || text[0] != '{') fail(where, "header is not a JSON object (it does not start with '{')");
  // nlohmann's lexer takes a NUL byte for the end of the input and would ignore what follows it;
  // JSON text cannot hold one (the reference reader refuses it as a trailing character).
  if (const void* z = std::memchr(text, '\0', n))
    fail(where, "header holds a NUL byte at byte " + std::to_string(static_cast<const char*>(z) - text + 8));
  const json j = parse_json(text, text + n, where, "header");
  if (!j.is_object()) fail(where, "header is not a JSON object");

  Header h;
  h.data_start = 8 + n;
  const uint64_t buffer = file_size - h.data_start;
  for (const auto& [key, v] : j.items()) {
    if (key == "__metadata__") {
      if (v.is_null()) continue;
      if (!v.is_object()) fail(where, "__metadata__ is not a map of strings to strings");
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string()) fail(where, "__metadata__ is not a map of strings to strings (value of '" + mk + "')");
        h.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    const std::string tn = "tensor '" + key + "'";
    if (!v.is_object()) fail(where, tn + " is not an object with dtype, shape, data_offsets");
    for (const char* f : {"dtype", "shape", "data_offsets"})
      if (!v.contains(f)) fail(where, tn + " has no " + f);
    TensorInfo t;
    t.name = key;
    if (!v["dtype"].is_string()) fail(where, tn + " has a dtype that is not a string");
    t.dtype = v["dtype"].get<std::string>();
    const int bits = dtype_bits(t.dtype);
    if (bits == 0) fail(where, tn + " has unknown dtype '" + t.dtype + "'");
    const json& sh = v["shape"];
    if (!sh.is_array()) fail(where, tn + " has a shape that is not an array");
    uint64_t numel = 1;
    bool overflow = false;
    for (const json& d : sh) {
      uint64_t x = 0;
      if (!as_u64(d, static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), x))
        fail(where, tn + " has shape " + sh.dump() + ": every dimension must be an integer >= 0");
      t.shape.push_back(static_cast<int64_t>(x));
      overflow = overflow || __builtin_mul_overflow(numel, x, &numel);
    }
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !as_u64(off[0], UINT64_MAX, t.begin) || !as_u64(off[1], UINT64_MAX, t.end))
      fail(where, tn + " has data_offsets " + off.dump() + ": need [begin, end], integers >= 0");
    if (t.end < t.begin) fail(where, tn + " has data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]: end before begin");
    uint64_t nbits = 0;
    if (overflow || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, static_cast<uint64_t>(bits), &nbits))
      fail(where, tn + " has " + t.dtype + " shape " + shape_str(t.shape) + ", whose byte size overflows 64 bits");
    if (nbits % 8 != 0)
      fail(where, tn + " has " + t.dtype + " shape " + shape_str(t.shape) + ", which is not a whole number of bytes");
    if (t.end - t.begin != nbits / 8)
      fail(where, tn + " data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] hold " +
                      std::to_string(t.end - t.begin) + " bytes, its " + t.dtype + " shape " + shape_str(t.shape) +
                      " needs " + std::to_string(nbits / 8));
    h.tensors.push_back(std::move(t));
  }

  // Tiling: sorted by offsets, each tensor starts where the previous ended (zero-size ones first).
  std::stable_sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t at = 0;
  for (const TensorInfo& t : h.tensors) {
    if (t.begin > at) fail(where, "tensors do not tile the data buffer: gap at byte " + std::to_string(at) + " (before tensor '" + t.name + "')");
    if (t.begin < at)
      fail(where, "tensors do not tile the data buffer: tensor '" + t.name + "' at byte " + std::to_string(t.begin) +
                      " overlaps the previous tensor, which ends at byte " + std::to_string(at));
    at = t.end;
  }
  if (at > buffer)
    fail(where, "tensors need " + std::to_string(at) + " bytes of data but the file holds " + std::to_string(buffer) +
                    " after the header (truncated?)");
  if (at < buffer) fail(where, "file has " + std::to_string(buffer - at) + " trailing bytes after the last tensor");
  return h;
}

File::File(const std::string& path) : path_(path) {
  Fd f;
  const uint64_t size = open_regular(f, path);
  std::vector<unsigned char> buf(std::min<uint64_t>(size, 8));
  pread_all(f.fd, buf.data(), buf.size(), 0, path);
  if (buf.size() == 8) {
    uint64_t n = 0;
    std::memcpy(&n, buf.data(), 8);
    if (n <= kMaxHeader && n <= size - 8) {  // otherwise parse_header names the problem
      buf.resize(8 + n);
      pread_all(f.fd, buf.data() + 8, n, 8, path);
    }
  }
  header_ = parse_header(buf.data(), buf.size(), size, path);
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

const TensorInfo* File::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

std::vector<float> File::read_float(const TensorInfo& t) const {
  const std::string tn = "tensor '" + t.name + "'";
  const int bits = dtype_bits(t.dtype);
  if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16" && t.dtype != "F64")
    fail(path_, tn + " has dtype " + t.dtype + ", which cannot be read as floats (F32, F16, BF16, F64 can)");
  const uint64_t esize = static_cast<uint64_t>(bits / 8);
  const int64_t numel = t.numel();
  const uint64_t data_size = header_.tensors.empty() ? 0 : header_.tensors.back().end;
  if (t.end < t.begin || t.end > data_size || t.end - t.begin != static_cast<uint64_t>(numel) * esize)
    fail(path_, tn + " does not lie in this file's data buffer");
  Fd f;
  const uint64_t size = open_regular(f, path_);
  if (size != header_.data_start + data_size)
    fail(path_, "file size changed since it was opened (" + std::to_string(size) + " bytes now, " +
                    std::to_string(header_.data_start + data_size) + " then)");
  std::vector<float> out(static_cast<size_t>(numel));
  const uint64_t base = header_.data_start + t.begin;
  if (t.dtype == "F32") {
    pread_all(f.fd, reinterpret_cast<unsigned char*>(out.data()), out.size() * 4, base, path_);
    return out;
  }
  // Converted in chunks, so that a multi-GB tensor needs no second full-size buffer.
  constexpr size_t kChunk = 1 << 16;  // elements
  std::vector<unsigned char> raw(kChunk * esize);
  for (size_t i = 0; i < out.size(); i += kChunk) {
    const size_t m = std::min(kChunk, out.size() - i);
    pread_all(f.fd, raw.data(), m * esize, base + i * esize, path_);
    const unsigned char* p = raw.data();
    for (size_t k = 0; k < m; ++k) {
      if (t.dtype == "F64") {
        double d;
        std::memcpy(&d, p + 8 * k, 8);
        out[i + k] = static_cast<float>(d);  // IEEE: nearest, overflow to infinity, NaN kept
      } else {
        uint16_t b;
        std::memcpy(&b, p + 2 * k, 2);
        out[i + k] = t.dtype == "F16" ? half_to_float(b) : bf16_to_float(b);
      }
    }
  }
  return out;
}

// Checkpoint directories. When both model.safetensors and the index exist, model.safetensors is
// used, as transformers' from_pretrained does (it looks for the single file first).
Checkpoint::Checkpoint(const std::string& dir) {
  std::error_code ec;
  dir_ = dir;
  if (!fs::exists(dir, ec)) fail(dir, "no such checkpoint directory");
  if (!fs::is_directory(dir, ec)) fail(dir, "is not a directory (a checkpoint is a directory holding " + std::string(kSingle) + ")");
  const fs::path index = fs::path(dir) / kIndex, single = fs::path(dir) / kSingle;
  if (fs::exists(index, ec) && !fs::exists(single, ec)) {
    const std::string ip = index.string();
    std::string text;
    {
      std::ifstream in(index, std::ios::binary);
      if (!in) fail(ip, std::string("cannot be opened: ") + std::strerror(errno));
      std::ostringstream ss;
      ss << in.rdbuf();
      text = ss.str();
    }
    const json j = parse_json(text.data(), text.data() + text.size(), ip, "index");
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail(ip, "has no \"weight_map\" object");
    std::map<std::string, size_t> shard_index;
    for (const auto& [name, v] : j["weight_map"].items()) {
      if (!v.is_string()) fail(ip, "weight_map assigns tensor '" + name + "' to " + v.dump() + ", not a file name");
      const std::string shard = v.get<std::string>();
      if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos)
        fail(ip, "weight_map assigns tensor '" + name + "' to '" + shard + "', not a file name in " + dir);
      auto [it, fresh] = shard_index.emplace(shard, files_.size());
      if (fresh) {
        const fs::path sp = fs::path(dir) / shard;
        if (!fs::exists(sp, ec)) fail(ip, "names shard '" + shard + "' (for tensor '" + name + "'), which does not exist");
        files_.push_back(std::make_unique<File>(sp.string()));
      }
      const TensorInfo* t = files_[it->second]->find(name);
      if (!t) fail(ip, "assigns tensor '" + name + "' to shard '" + shard + "', which does not hold it");
      where_[name] = {it->second, t};
    }
    // Every tensor of a shard must be listed: an unlisted one would be silently dropped.
    for (const auto& f : files_)
      for (const TensorInfo& t : f->header().tensors) {
        auto w = where_.find(t.name);
        if (w == where_.end() || files_[w->second.first].get() != f.get())
          fail(ip, "shard '" + fs::path(f->path()).filename().string() + "' holds tensor '" + t.name +
                       "', which the index does not assign to it");
      }
  } else if (fs::exists(single, ec)) {
    files_.push_back(std::make_unique<File>(single.string()));
    for (const TensorInfo& t : files_[0]->header().tensors) where_[t.name] = {0, &t};
  } else {
    fail(dir, std::string("holds neither ") + kSingle + " nor " + kIndex);
  }
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> r;
  for (const auto& [name, w] : where_) r.push_back(name);
  return r;
}

bool Checkpoint::has(const std::string& name) const { return where_.count(name) != 0; }

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_, "checkpoint has no tensor '" + name + "'");
  return *it->second.second;
}

std::vector<float> Checkpoint::read_float(const std::string& name) const {
  const TensorInfo& t = info(name);
  return files_[where_.at(name).first]->read_float(t);
}

void write_file(const std::string& path, const std::vector<NamedTensor>& tensors, DType dtype,
                const std::map<std::string, std::string>& metadata) {
  const uint64_t esize = dtype == DType::F32 ? 4 : 2;
  std::vector<const NamedTensor*> order;
  for (const NamedTensor& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const NamedTensor* a, const NamedTensor* b) { return a->name < b->name; });
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<uint64_t> counts;
  uint64_t off = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const NamedTensor& t = *order[i];
    if (t.name == "__metadata__") fail(path, "a tensor cannot be named __metadata__");
    if (i > 0 && order[i - 1]->name == t.name) fail(path, "two tensors are named '" + t.name + "'");
    uint64_t n = 1;
    for (int64_t d : t.shape)
      if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n))
        fail(path, "tensor '" + t.name + "' has bad shape " + shape_str(t.shape));
    if (n > 0 && !t.data) fail(path, "tensor '" + t.name + "' has no data");
    header[t.name] = {{"dtype", dtype == DType::F32 ? "F32" : "BF16"}, {"shape", t.shape}, {"data_offsets", {off, off + n * esize}}};
    counts.push_back(n);
    off += n * esize;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    fail(path, std::string("cannot write the header: ") + e.what());  // a name that is not UTF-8
  }
  while (text.size() % 8 != 0) text.push_back(' ');

  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, "cannot write " + tmp + ": " + std::strerror(errno));
  auto write_all = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd, c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return false;
      c += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  };
  auto give_up = [&](int err) {
    ::close(fd);
    ::unlink(tmp.c_str());
    fail(path, std::string("write failed: ") + std::strerror(err));
  };
  const uint64_t len = text.size();
  if (!write_all(&len, 8) || !write_all(text.data(), text.size())) give_up(errno);
  std::vector<uint16_t> buf;
  for (size_t i = 0; i < order.size(); ++i) {
    const float* d = order[i]->data;
    const uint64_t n = counts[i];
    if (dtype == DType::F32) {
      if (n > 0 && !write_all(d, n * 4)) give_up(errno);
      continue;
    }
    constexpr uint64_t kChunk = 1 << 16;
    for (uint64_t s = 0; s < n; s += kChunk) {
      const uint64_t m = std::min(kChunk, n - s);
      buf.resize(m);
      for (uint64_t k = 0; k < m; ++k) buf[k] = bf16_bits(d[s + k]);
      if (!write_all(buf.data(), m * 2)) give_up(errno);
    }
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail(path, std::string("write failed: ") + std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail(path, "cannot rename " + tmp + " to it: " + std::strerror(err));
  }
}

}  // namespace lossytp::safetensors
