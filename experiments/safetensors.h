// safetensors files (Hugging Face's weight format): read with every header check of the reference
// reader, write as transformers does. A file is an 8-byte little-endian header length N, N bytes
// of JSON ({"name": {"dtype", "shape", "data_offsets": [begin, end)}, ..., "__metadata__": {...}}),
// then the tensors' bytes. A checkpoint directory holds model.safetensors, or shards listed by
// model.safetensors.index.json ({"weight_map": {name: shard file}}).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace lossytp::safetensors {

struct TensorInfo {
  std::string name;
  std::string dtype;             // "F32", "F16", "BF16", ... as in the header
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;   // byte offsets into the data buffer (after the header), end exclusive
  int64_t numel() const;
};

struct Header {
  std::vector<TensorInfo> tensors;                 // in file order of their data
  std::map<std::string, std::string> metadata;     // "__metadata__"
  uint64_t data_start = 0;                         // 8 + N
};

// Parses and validates a header given the file's first bytes (at least 8 + N of them) and its total
// size: N <= 100 MB and within the file, a JSON object (starting with '{', no NUL byte, no
// duplicate key at any level, integers where integers are due), known dtype strings, non-negative
// shapes, tensors tiling the buffer from 0 without gaps or overlap, end - begin == numel * dtype
// size (overflow refused), and 8 + N + last end == file_size. Throws std::runtime_error("<where>: <problem>").
Header parse_header(const unsigned char* data, size_t size, uint64_t file_size, const std::string& where);

// One file, its header parsed and checked on open (the data are read on demand).
class File {
 public:
  explicit File(const std::string& path);  // throws std::runtime_error naming the file
  const std::string& path() const { return path_; }
  const Header& header() const { return header_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  // The tensor's values as fp32 (F32, F16, BF16, F64 converted); another dtype throws naming it.
  std::vector<float> read_float(const TensorInfo& t) const;

 private:
  std::string path_;
  Header header_;
  std::map<std::string, size_t> index_;
};

// A Hugging Face checkpoint directory: model.safetensors, or model.safetensors.index.json and the
// shards it names (every shard must exist and hold the tensors the index assigns to it, and every
// tensor of a shard must be listed). When both exist the index is used.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir);  // throws std::runtime_error naming the file
  std::vector<std::string> names() const;       // every tensor, sorted
  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws when absent
  std::vector<float> read_float(const std::string& name) const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<File>> files_;
  std::map<std::string, std::pair<size_t, const TensorInfo*>> where_;
};

enum class DType { F32, BF16 };
struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // numel(shape) values
};
// Writes a file as the reference writer does: header padded with spaces to a multiple of 8,
// "__metadata__" as given, tensors ordered by name, converted to `dtype` (BF16: round to nearest
// even; NaN stays NaN). "__metadata__" is omitted when `metadata` is empty: pass {"format": "pt"}
// for transformers. Written to path + ".tmp" and renamed, so a failure leaves no partial file;
// throws naming the path (and errno's text).
void write_file(const std::string& path, const std::vector<NamedTensor>& tensors, DType dtype,
                const std::map<std::string, std::string>& metadata);

}  // namespace lossytp::safetensors
