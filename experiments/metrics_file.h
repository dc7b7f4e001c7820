// metrics.h5: a run's results, in the layout design.md promises (root attributes config,
// status, version; extendible 1-D datasets /train/*, /eval/*, /comm/<site>/<counter>).
//
// Written incrementally, in two files: <path>, which readers open, and "<path>.shadow". flush()
// appends only the rows and attributes the shadow lacks (the rows of the previous flush and the
// new ones: O(new rows), whatever the file size), closes and fsyncs it, and swaps the two names
// atomically (renameat2 RENAME_EXCHANGE; on filesystems without it, a hard link and two renames).
// So <path> is only ever a complete, closed HDF5 file that nobody modifies while it has that
// name: h5py and h5dump (no SWMR flags) open it at any moment of a run, and after a kill -9 at
// any moment it holds every row up to the last flush. (HDF5's SWMR mode would also keep a single
// file consistent, but h5py and h5dump without SWMR flags refuse such a file while it is written
// and after a crash, until h5clear.) The file that becomes the shadow is only modified after an
// exclusive flock() on it succeeds: a reader that still has it open (HDF5 holds a shared lock
// while a file is open, unless HDF5_USE_FILE_LOCKING=FALSE) keeps its copy intact, and the shadow
// is then rebuilt as a byte copy of <path>. Memory holds only the rows one of the two files lacks
// (and a loaded file's rows until its first flush); the destructor removes the shadow.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <variant>
#include <vector>

namespace lossytp {

class MetricsFile {
 public:
  using Attr = std::variant<std::string, double, int64_t>;

  // A new file: its first flush() replaces whatever <path> holds.
  explicit MetricsFile(std::string path) : path_(std::move(path)) {}
  ~MetricsFile();
  MetricsFile(MetricsFile&& o) noexcept;
  MetricsFile& operator=(MetricsFile&& o) noexcept;
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;

  // Reads an existing metrics.h5 back (attributes and every 1-D dataset under /train, /eval,
  // /comm and any other group), so a resumed run can continue it: integer datasets become
  // int64 series, float ones float64; scalar string/float/integer root attributes are kept.
  // flush() continues the file (rows past truncate_after cuts are dropped from it). The file is
  // read under HDF5's shared file lock, so a writer does not modify it meanwhile. Throws
  // std::runtime_error naming the path on a missing, non-HDF5 or unreadable file.
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
  // The rows of a series held in memory: all of them for a loaded or never flushed file; after
  // a flush only those one of the two files lacks, starting at row first_row(dataset). rows()
  // counts them all (flushed or not); 0 for an unknown series.
  const std::vector<double>* series(const std::string& dataset) const;
  const std::vector<int64_t>* int_series(const std::string& dataset) const;
  size_t rows(const std::string& dataset) const;
  // The names of the series held in memory (float and integer), sorted.
  std::vector<std::string> series_names() const;
  size_t first_row(const std::string& dataset) const;
  // Drops every row of the group ("train", "eval") whose "<group>/iteration" is > iteration;
  // used when a run resumes from an earlier checkpoint. Every series under "<group>/" is cut
  // to the rows before the first iteration > `iteration`. A series is cut by the deepest
  // ".../iteration" series whose group contains it, so truncate_after("comm", i) cuts each
  // "comm/<site>/*" by its own "comm/<site>/iteration"; series with none are left alone.
  // Iteration rows no longer in memory are read back from <path>.
  void truncate_after(const std::string& group, int64_t iteration);

  // Brings the shadow up to date (attributes that changed, rows it lacks; a new series becomes a
  // chunked dataset with unlimited max size), fsyncs it and swaps it with <path> (see above).
  // String attributes are variable-length UTF-8, doubles float64, ints int64; the format is
  // limited to HDF5 1.8 objects so h5py and h5dump 1.8+ read it. Throws std::runtime_error
  // naming the path on failure: <path> is then untouched, the shadow removed, no row lost from
  // memory, and the next flush starts over from a byte copy of <path>.
  void flush();

  static std::string shadow_path(const std::string& path) { return path + ".shadow"; }

 private:
  // What one of the two files holds: its inode (to notice a file replaced behind our back),
  // the valid leading rows and the extent of each series, and its attributes.
  struct FileState {
    bool valid = false;
    dev_t dev = 0;
    ino_t ino = 0;
    std::map<std::string, size_t> rows, extent;
    std::map<std::string, Attr> attrs;
    std::set<std::string> fixed;  // fixed-size datasets (another tool's): rewritten whole once
  };
  void drop_flushed_rows();
  void remove_shadow() noexcept;

  std::string path_;
  std::map<std::string, Attr> attrs_;
  std::map<std::string, std::vector<double>> f64_;
  std::map<std::string, std::vector<int64_t>> i64_;
  std::map<std::string, size_t> begin_;  // row index of a series' first row in memory (absent: 0)
  FileState pub_, shadow_;               // <path> and <path>.shadow
};

}  // namespace lossytp
