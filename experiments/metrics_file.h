// metrics.h5: a run's results, in the layout design.md promises (root attributes config,
// status, version; extendible 1-D datasets /train/*, /eval/*, /comm/<site>/<counter>).
// Everything is kept in memory and flush() writes the whole file to "<path>.tmp" and renames it
// over <path>: a reader (h5py, h5dump) never sees a half-written file, between flushes or after
// a kill -9, and the writer holds no HDF5 file open between flushes, so no lock blocks readers.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace lossytp {

class MetricsFile {
 public:
  using Attr = std::variant<std::string, double, int64_t>;

  explicit MetricsFile(std::string path) : path_(std::move(path)) {}
  // Reads an existing metrics.h5 back (attributes and every 1-D dataset under /train, /eval,
  // /comm and any other group), so a resumed run can continue it: integer datasets become
  // int64 series, float ones float64; scalar string/float/integer root attributes are kept.
  // Throws std::runtime_error naming the path on a missing, non-HDF5 or unreadable file.
  static MetricsFile load(const std::string& path);

  const std::string& path() const { return path_; }
  void set_attr(const std::string& name, Attr value) { attrs_[name] = std::move(value); }
  const std::map<std::string, Attr>& attrs() const { return attrs_; }

  // Appends one value to the 1-D series at `dataset` ("train/loss", "comm/embed.fwd/bytes";
  // a leading '/' is ignored). A new series is float64 unless its name ends in "iteration"
  // (then int64, the value rounded) or it is created by append_int (int64). An existing series
  // keeps its type: append() to an int64 series rounds, append_int() to a float64 one converts.
  void append(const std::string& dataset, double value);
  void append_int(const std::string& dataset, int64_t value);
  const std::vector<double>* series(const std::string& dataset) const;
  const std::vector<int64_t>* int_series(const std::string& dataset) const;
  // Drops every row of the group ("train", "eval") whose "<group>/iteration" is > iteration;
  // used when a run resumes from an earlier checkpoint. Every series under "<group>/" is cut
  // to the rows before the first iteration > `iteration`. A series is cut by the deepest
  // ".../iteration" series whose group contains it, so truncate_after("comm", i) cuts each
  // "comm/<site>/*" by its own "comm/<site>/iteration"; series with none are left alone.
  void truncate_after(const std::string& group, int64_t iteration);

  // Writes the file atomically (tmp + rename). Datasets are chunked with unlimited max size;
  // string attributes are variable-length UTF-8, doubles float64, ints int64; the format is
  // limited to HDF5 1.8 objects so h5py and h5dump 1.8+ read it. Throws std::runtime_error
  // naming the path on failure (and removes the temp file).
  void flush() const;

 private:
  std::string path_;
  std::map<std::string, Attr> attrs_;
  std::map<std::string, std::vector<double>> f64_;
  std::map<std::string, std::vector<int64_t>> i64_;
};

}  // namespace lossytp
