#include "experiments/metrics_file.h"

#include <hdf5.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <utility>

namespace lossytp {

namespace {

// ---- HDF5 plumbing ---------------------------------------------------------------------------

// Silences HDF5's automatic error printing; failures become exceptions. Every call, not once:
// the library restores the default printer when it is closed and re-initialised.
void quiet_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

// The messages on HDF5's error stack, outermost (API) first, joined: "api: ...: innermost".
std::string h5_error_text() {
  std::vector<std::string> msgs;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
        auto* v = static_cast<std::vector<std::string>*>(data);
        if (e->desc && *e->desc) v->push_back(e->desc);
        return 0;
      },
      &msgs);
  H5Eclear2(H5E_DEFAULT);
  if (msgs.empty()) return "";
  std::string s = msgs.front();
  if (msgs.size() > 1) s += ": " + msgs.back();
  return s;
}

[[noreturn]] void h5_fail(const std::string& path, const std::string& what) {
  std::string detail = h5_error_text();
  throw std::runtime_error("metrics file " + path + ": " + what +
                           (detail.empty() ? "" : " (HDF5: " + detail + ")"));
}

// Owns one HDF5 identifier and closes it with the matching H5*close.
class H5Id {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Id() = default;
  H5Id(hid_t id, Closer close) : id_(id), close_(close) {}
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  H5Id(H5Id&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  H5Id& operator=(H5Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, -1);
      close_ = o.close_;
    }
    return *this;
  }
  ~H5Id() { reset(); }
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }
  // Closes now and reports whether the close succeeded (H5Fclose flushes the file).
  bool close() {
    herr_t r = (id_ >= 0 && close_) ? close_(id_) : 0;
    id_ = -1;
    return r >= 0;
  }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_ = -1;
  Closer close_ = nullptr;
};

// Checks an identifier-returning call.
H5Id check(hid_t id, H5Id::Closer close, const std::string& path, const std::string& what) {
  if (id < 0) h5_fail(path, what);
  return H5Id(id, close);
}
void check(herr_t r, const std::string& path, const std::string& what) {
  if (r < 0) h5_fail(path, what);
}

// File access: superblock/object formats readable by HDF5 1.8 and newer (h5py, h5dump 1.10),
// strong close (nothing stays open after H5Fclose). The writer disables HDF5's file locking (it
// holds its own flock on the shadow, and HDF5's would conflict with it); a reader (load) takes
// HDF5's shared lock, which tells a writer not to modify the file under it, and goes on without
// one on filesystems that have no locks (NFS/Lustre).
H5Id make_fapl(const std::string& path, bool lock = false) {
  H5Id fapl = check(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, path, "cannot create access plist");
  check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_EARLIEST, H5F_LIBVER_V18), path,
        "cannot set format version bounds");
  check(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), path, "cannot set close degree");
#if H5_VERSION_GE(1, 10, 7)
  check(H5Pset_file_locking(fapl.get(), lock, true), path, "cannot set file locking");
#endif
  return fapl;
}

std::string normalize(const std::string& name) {
  size_t b = name.find_first_not_of('/');
  if (b == std::string::npos) throw std::invalid_argument("MetricsFile: empty dataset name '" + name + "'");
  size_t e = name.find_last_not_of('/');
  return name.substr(b, e - b + 1);
}

bool ends_with_iteration(const std::string& name) {
  static const std::string suffix = "iteration";
  return name.size() >= suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// ---- writing ---------------------------------------------------------------------------------

void write_attr(hid_t file, const std::string& path, const std::string& name,
                const MetricsFile::Attr& value) {
  H5Id space = check(H5Screate(H5S_SCALAR), H5Sclose, path, "cannot create attribute space");
  if (const auto* s = std::get_if<std::string>(&value)) {
    // Variable-length UTF-8: h5py reads it as str, and long values (a JSON config) live in the
    // global heap rather than the 64 KiB object header.
    H5Id type = check(H5Tcopy(H5T_C_S1), H5Tclose, path, "cannot create string type");
    check(H5Tset_size(type.get(), H5T_VARIABLE), path, "cannot set string size");
    check(H5Tset_cset(type.get(), H5T_CSET_UTF8), path, "cannot set string charset");
    H5Id attr = check(H5Acreate2(file, name.c_str(), type.get(), space.get(), H5P_DEFAULT,
                                 H5P_DEFAULT),
                      H5Aclose, path, "cannot create attribute '" + name + "'");
    const char* p = s->c_str();
    check(H5Awrite(attr.get(), type.get(), &p), path, "cannot write attribute '" + name + "'");
  } else if (const auto* d = std::get_if<double>(&value)) {
    H5Id attr = check(H5Acreate2(file, name.c_str(), H5T_IEEE_F64LE, space.get(), H5P_DEFAULT,
                                 H5P_DEFAULT),
                      H5Aclose, path, "cannot create attribute '" + name + "'");
    check(H5Awrite(attr.get(), H5T_NATIVE_DOUBLE, d), path,
          "cannot write attribute '" + name + "'");
  } else {
    const int64_t* i = std::get_if<int64_t>(&value);
    H5Id attr = check(H5Acreate2(file, name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT,
                                 H5P_DEFAULT),
                      H5Aclose, path, "cannot create attribute '" + name + "'");
    check(H5Awrite(attr.get(), H5T_NATIVE_INT64, i), path,
          "cannot write attribute '" + name + "'");
  }
}

// Rows per chunk of a new dataset (4 KiB of 8-byte values): appends touch one or two chunks.
constexpr hsize_t kChunkRows = 512;
constexpr size_t kAbsent = static_cast<size_t>(-1);

H5Id create_series(hid_t file, hid_t lcpl, const std::string& path, const std::string& name,
                   hid_t file_type, size_t n) {
  hsize_t dims[1] = {static_cast<hsize_t>(n)};
  hsize_t maxdims[1] = {H5S_UNLIMITED};
  hsize_t chunk[1] = {kChunkRows};
  H5Id space = check(H5Screate_simple(1, dims, maxdims), H5Sclose, path,
                     "cannot create dataspace for '" + name + "'");
  H5Id dcpl = check(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, path, "cannot create dcpl");
  check(H5Pset_chunk(dcpl.get(), 1, chunk), path, "cannot set chunking for '" + name + "'");
  return check(H5Dcreate2(file, name.c_str(), file_type, space.get(), lcpl, dcpl.get(),
                          H5P_DEFAULT),
               H5Dclose, path, "cannot create dataset '" + name + "'");
}

// Brings dataset `name` to `total` rows, writing rows [from, total) from `mem`, whose element 0
// is row `begin`. `extent` is the dataset's current extent (kAbsent: it does not exist yet).
// Only the new rows are written; a dataset that cannot grow (a fixed-size one from another
// writer) is recreated whole, which needs every row in memory.
template <class T>
void put_series(hid_t file, hid_t lcpl, const std::string& path, const std::string& name,
                hid_t file_type, hid_t mem_type, const std::vector<T>& mem, size_t begin,
                size_t from, size_t extent, size_t total) {
  H5Id ds;
  if (extent == kAbsent) {
    from = 0;
  } else {
    ds = check(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose, path,
               "cannot open dataset '" + name + "'");
    if (extent != total) {
      H5Id space = check(H5Dget_space(ds.get()), H5Sclose, path,
                         "cannot read dataset '" + name + "'");
      hsize_t dims[1] = {0}, maxdims[1] = {0};
      if (H5Sget_simple_extent_ndims(space.get()) != 1 ||
          H5Sget_simple_extent_dims(space.get(), dims, maxdims) < 0)
        h5_fail(path, "dataset '" + name + "' is not 1-D");
      if (maxdims[0] != H5S_UNLIMITED && maxdims[0] < total) {
        ds.reset();
        check(H5Ldelete(file, name.c_str(), H5P_DEFAULT), path,
              "cannot replace fixed-size dataset '" + name + "'");
        extent = kAbsent;
        from = 0;
      } else {
        hsize_t n[1] = {static_cast<hsize_t>(total)};
        check(H5Dset_extent(ds.get(), n), path, "cannot resize dataset '" + name + "'");
      }
    }
  }
  if (from < begin)
    throw std::runtime_error("metrics file " + path + ": rows 0.." + std::to_string(begin) +
                             " of '" + name + "' are no longer in memory and the file that held "
                             "them was replaced or removed during the run");
  if (extent == kAbsent) ds = create_series(file, lcpl, path, name, file_type, total);
  if (from >= total) return;
  hsize_t start[1] = {static_cast<hsize_t>(from)}, count[1] = {static_cast<hsize_t>(total - from)};
  H5Id fspace = check(H5Dget_space(ds.get()), H5Sclose, path, "cannot read dataset '" + name + "'");
  check(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr), path,
        "cannot select rows of '" + name + "'");
  H5Id mspace = check(H5Screate_simple(1, count, nullptr), H5Sclose, path,
                      "cannot create dataspace for '" + name + "'");
  check(H5Dwrite(ds.get(), mem_type, mspace.get(), fspace.get(), H5P_DEFAULT,
                 mem.data() + (from - begin)),
        path, "cannot write dataset '" + name + "'");
}

// Every value of a 1-D dataset, as double.
std::vector<double> read_series(const std::string& path, const std::string& name) {
  H5Id fapl = make_fapl(path, true);
  H5Id file = check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose, path,
                    "cannot open file");
  H5Id ds = check(H5Dopen2(file.get(), name.c_str(), H5P_DEFAULT), H5Dclose, path,
                  "cannot open dataset '" + name + "'");
  H5Id space = check(H5Dget_space(ds.get()), H5Sclose, path, "cannot read dataset '" + name + "'");
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space.get(), &n, nullptr);
  std::vector<double> v(n);
  if (n > 0)
    check(H5Dread(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), path,
          "cannot read dataset '" + name + "'");
  return v;
}

bool file_id(const std::string& p, dev_t& dev, ino_t& ino) {
  struct stat st;
  if (::stat(p.c_str(), &st) != 0) return false;
  dev = st.st_dev;
  ino = st.st_ino;
  return true;
}

void fsync_file(const std::string& p) {
  int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

// Gives `to` the file named `from` and `from` the file `to` had, atomically (RENAME_EXCHANGE).
// Where the filesystem cannot exchange (NFS), a hard link keeps `to`'s old file while `from` is
// renamed over it; `to` names a complete file at every moment either way. Returns false when
// `from` no longer names a file afterwards (there was no `to`, or no hard link could be made).
bool swap_names(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) return true;
  const int e = errno;
  const std::string prev = to + ".prev";
  bool linked = false;
  if (e != ENOENT) {
    if (e != EINVAL && e != ENOSYS && e != ENOTSUP && e != EOPNOTSUPP)
      throw std::runtime_error("metrics file " + to + ": cannot swap " + from + " with it: " +
                               std::strerror(e));
    ::unlink(prev.c_str());
    linked = ::link(to.c_str(), prev.c_str()) == 0;
  }
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    const int e2 = errno;
    if (linked) ::unlink(prev.c_str());
    throw std::runtime_error("metrics file " + to + ": cannot rename " + from + " over it: " +
                             std::strerror(e2));
  }
  return linked && std::rename(prev.c_str(), from.c_str()) == 0;
}

// ---- reading ---------------------------------------------------------------------------------

struct LoadCtx {
  std::string path;
  std::map<std::string, MetricsFile::Attr>* attrs;
  std::map<std::string, std::vector<double>>* f64;
  std::map<std::string, std::vector<int64_t>>* i64;
  std::set<std::string>* fixed;  // datasets that cannot grow
  std::string error;  // set by a callback that failed
};

bool read_attr(hid_t attr, const std::string& path, const std::string& name,
               MetricsFile::Attr& out) {
  H5Id space = check(H5Aget_space(attr), H5Sclose, path, "cannot read attribute '" + name + "'");
  if (H5Sget_simple_extent_npoints(space.get()) != 1) return false;  // arrays: not ours
  H5Id type = check(H5Aget_type(attr), H5Tclose, path, "cannot read attribute '" + name + "'");
  switch (H5Tget_class(type.get())) {
    case H5T_STRING: {
      if (H5Tis_variable_str(type.get()) > 0) {
        H5Id mem = check(H5Tcopy(H5T_C_S1), H5Tclose, path, "cannot create string type");
        check(H5Tset_size(mem.get(), H5T_VARIABLE), path, "cannot set string size");
        check(H5Tset_cset(mem.get(), H5Tget_cset(type.get())), path, "cannot set charset");
        char* p = nullptr;
        check(H5Aread(attr, mem.get(), &p), path, "cannot read attribute '" + name + "'");
        out = std::string(p ? p : "");
        if (p) H5free_memory(p);
      } else {
        size_t size = H5Tget_size(type.get());
        std::string buf(size, '\0');
        check(H5Aread(attr, type.get(), buf.data()), path,
              "cannot read attribute '" + name + "'");
        size_t end = buf.find('\0');
        if (end != std::string::npos) buf.resize(end);
        if (H5Tget_strpad(type.get()) == H5T_STR_SPACEPAD) {
          size_t e = buf.find_last_not_of(' ');
          buf.resize(e == std::string::npos ? 0 : e + 1);
        }
        out = std::move(buf);
      }
      return true;
    }
    case H5T_FLOAT: {
      double d = 0;
      check(H5Aread(attr, H5T_NATIVE_DOUBLE, &d), path, "cannot read attribute '" + name + "'");
      out = d;
      return true;
    }
    case H5T_INTEGER: {
      int64_t i = 0;
      check(H5Aread(attr, H5T_NATIVE_INT64, &i), path, "cannot read attribute '" + name + "'");
      out = i;
      return true;
    }
    default:
      return false;
  }
}

herr_t attr_cb(hid_t loc, const char* name, const H5A_info_t*, void* data) {
  auto* ctx = static_cast<LoadCtx*>(data);
  try {
    H5Id attr = check(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose, ctx->path,
                      std::string("cannot open attribute '") + name + "'");
    MetricsFile::Attr v;
    if (read_attr(attr.get(), ctx->path, name, v)) (*ctx->attrs)[name] = std::move(v);
    return 0;
  } catch (const std::exception& e) {
    ctx->error = e.what();
    return -1;
  }
}

herr_t link_cb(hid_t group, const char* name, const H5L_info_t* info, void* data) {
  auto* ctx = static_cast<LoadCtx*>(data);
  if (info->type != H5L_TYPE_HARD) return 0;
  try {
    H5Id obj = check(H5Oopen(group, name, H5P_DEFAULT), H5Oclose, ctx->path,
                     std::string("cannot open object '") + name + "'");
    if (H5Iget_type(obj.get()) != H5I_DATASET) return 0;
    hid_t ds = obj.get();
    H5Id space = check(H5Dget_space(ds), H5Sclose, ctx->path,
                       std::string("cannot read dataset '") + name + "'");
    if (H5Sget_simple_extent_ndims(space.get()) != 1) return 0;
    hsize_t n = 0, maxn = 0;
    H5Sget_simple_extent_dims(space.get(), &n, &maxn);
    if (maxn != H5S_UNLIMITED) ctx->fixed->insert(name);
    H5Id type = check(H5Dget_type(ds), H5Tclose, ctx->path,
                      std::string("cannot read dataset '") + name + "'");
    H5T_class_t cls = H5Tget_class(type.get());
    if (cls == H5T_INTEGER) {
      std::vector<int64_t> v(n);
      if (n > 0)
        check(H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), ctx->path,
              std::string("cannot read dataset '") + name + "'");
      (*ctx->i64)[name] = std::move(v);
    } else if (cls == H5T_FLOAT) {
      std::vector<double> v(n);
      if (n > 0)
        check(H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), ctx->path,
              std::string("cannot read dataset '") + name + "'");
      (*ctx->f64)[name] = std::move(v);
    }
    return 0;
  } catch (const std::exception& e) {
    ctx->error = e.what();
    return -1;
  }
}

}  // namespace

// ---- MetricsFile -----------------------------------------------------------------------------

void MetricsFile::append(const std::string& dataset, double value) {
  std::string name = normalize(dataset);
  if (auto it = i64_.find(name); it != i64_.end()) {
    it->second.push_back(static_cast<int64_t>(std::llround(value)));
  } else if (auto jt = f64_.find(name); jt != f64_.end()) {
    jt->second.push_back(value);
  } else if (ends_with_iteration(name)) {
    i64_[name].push_back(static_cast<int64_t>(std::llround(value)));
  } else {
    f64_[name].push_back(value);
  }
}

void MetricsFile::append_int(const std::string& dataset, int64_t value) {
  std::string name = normalize(dataset);
  if (auto jt = f64_.find(name); jt != f64_.end())
    jt->second.push_back(static_cast<double>(value));
  else
    i64_[name].push_back(value);
}

const std::vector<double>* MetricsFile::series(const std::string& dataset) const {
  auto it = f64_.find(normalize(dataset));
  return it == f64_.end() ? nullptr : &it->second;
}

std::vector<std::string> MetricsFile::series_names() const {
  std::vector<std::string> names;
  for (const auto& [k, v] : f64_) names.push_back(k);
  for (const auto& [k, v] : i64_) names.push_back(k);
  std::sort(names.begin(), names.end());
  return names;
}

const std::vector<int64_t>* MetricsFile::int_series(const std::string& dataset) const {
  auto it = i64_.find(normalize(dataset));
  return it == i64_.end() ? nullptr : &it->second;
}

size_t MetricsFile::first_row(const std::string& dataset) const {
  auto it = begin_.find(normalize(dataset));
  return it == begin_.end() ? 0 : it->second;
}

size_t MetricsFile::rows(const std::string& dataset) const {
  const std::string name = normalize(dataset);
  size_t n = 0;
  if (auto it = f64_.find(name); it != f64_.end()) n = it->second.size();
  else if (auto jt = i64_.find(name); jt != i64_.end()) n = jt->second.size();
  else return 0;
  return first_row(name) + n;
}

void MetricsFile::truncate_after(const std::string& group, int64_t iteration) {
  quiet_hdf5();
  const std::string g = normalize(group);
  // Cut point of every "<g>/.../iteration" series: the first row whose iteration > iteration.
  // A series is cut at the cut point of the deepest iteration series whose group contains it.
  std::map<std::string, size_t> cut;  // group prefix ("train/") -> rows to keep
  auto add_cut = [&](const std::string& name, const auto& mem) {
    if (!ends_with_iteration(name) || name.size() < 10 || name[name.size() - 10] != '/') return;
    std::string prefix = name.substr(0, name.size() - 9);  // keeps the trailing '/'
    if (prefix.compare(0, g.size() + 1, g + "/") != 0) return;
    const size_t b = first_row(name);
    std::vector<double> v;  // every row: the flushed ones no longer in memory read back
    if (b > 0) {
      if (!pub_.valid)
        throw std::runtime_error("metrics file " + path_ + ": cannot truncate '" + name +
                                 "': its flushed rows are not in memory and the file is gone");
      v = read_series(path_, name);
      v.resize(b);
    }
    for (auto x : mem) v.push_back(static_cast<double>(x));
    size_t k = 0;
    while (k < v.size() && v[k] <= static_cast<double>(iteration)) ++k;
    cut[prefix] = k;
  };
  for (const auto& [name, v] : i64_) add_cut(name, v);
  for (const auto& [name, v] : f64_) add_cut(name, v);
  if (cut.empty()) return;
  auto apply = [&](const std::string& name, auto& v) {
    const std::string* best = nullptr;
    for (const auto& [prefix, k] : cut)
      if (name.compare(0, prefix.size(), prefix) == 0 && (!best || prefix.size() > best->size()))
        best = &prefix;
    if (!best) return;
    const size_t k = cut[*best], b = first_row(name);
    if (k >= b + v.size()) return;
    if (k >= b) {
      v.resize(k - b);
    } else {
      v.clear();
      begin_[name] = k;
    }
    // the files hold only the rows before the cut as valid; flush() shrinks their extents
    for (FileState* f : {&pub_, &shadow_})
      if (auto r = f->rows.find(name); r != f->rows.end()) r->second = std::min(r->second, k);
  };
  for (auto& [name, v] : i64_) apply(name, v);
  for (auto& [name, v] : f64_) apply(name, v);
}

void MetricsFile::flush() {
  quiet_hdf5();
  const std::string shadow = shadow_path(path_), tmp = path_ + ".tmp";
  dev_t dev = 0;
  ino_t ino = 0;
  // <path> is still the file this object wrote or loaded? (else it cannot seed a shadow)
  if (pub_.valid && !(file_id(path_, dev, ino) && dev == pub_.dev && ino == pub_.ino))
    pub_.valid = false;
  int lock_fd = -1;
  bool touched = false;  // the shadow is being modified: on failure it is garbage
  try {
    // The shadow may be modified only when it is still ours and no reader has it open (a
    // reader that opened <path> before the last swap holds HDF5's shared lock on it).
    if (shadow_.valid && file_id(shadow, dev, ino) && dev == shadow_.dev && ino == shadow_.ino) {
      lock_fd = ::open(shadow.c_str(), O_RDWR | O_CLOEXEC);
      if (lock_fd >= 0 && ::flock(lock_fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
        ::close(lock_fd);  // in use: leave that file to its reader
        lock_fd = -1;
      }  // other flock errors: a filesystem without locks; go on, as HDF5 does
    }
    if (lock_fd < 0) {
      // A fresh shadow (a new inode, so a reader of the old one keeps it intact): a byte copy
      // of <path> (O(file), once per resume or per reader that held on), else an empty file.
      std::remove(tmp.c_str());
      if (pub_.valid) {
        std::error_code ec;
        std::filesystem::copy_file(path_, tmp, ec);
        if (ec)
          throw std::runtime_error("metrics file " + path_ + ": cannot copy it to " + tmp + ": " +
                                   ec.message());
        fsync_file(tmp);
        shadow_ = pub_;
      } else {
        H5Id fapl = make_fapl(tmp);
        H5Id file = check(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                          H5Fclose, tmp, "cannot create file");
        if (!file.close()) h5_fail(tmp, "cannot close (flush) file");
        shadow_ = FileState{};
      }
      if (std::rename(tmp.c_str(), shadow.c_str()) != 0)
        throw std::runtime_error("metrics file " + path_ + ": cannot rename " + tmp + " to " +
                                 shadow + ": " + std::strerror(errno));
      if (!file_id(shadow, shadow_.dev, shadow_.ino))
        throw std::runtime_error("metrics file " + path_ + ": " + shadow + " vanished");
      shadow_.valid = true;
      lock_fd = ::open(shadow.c_str(), O_RDWR | O_CLOEXEC);
      if (lock_fd >= 0) (void)::flock(lock_fd, LOCK_EX | LOCK_NB);
    }
    touched = true;
    {
      H5Id fapl = make_fapl(shadow);
      H5Id file = check(H5Fopen(shadow.c_str(), H5F_ACC_RDWR, fapl.get()), H5Fclose, shadow,
                        "cannot open file");
      for (const auto& [name, value] : attrs_) {
        auto it = shadow_.attrs.find(name);
        if (it != shadow_.attrs.end() && it->second == value) continue;
        if (H5Aexists(file.get(), name.c_str()) > 0)
          check(H5Adelete(file.get(), name.c_str()), shadow,
                "cannot replace attribute '" + name + "'");
        write_attr(file.get(), shadow, name, value);
        shadow_.attrs[name] = value;
      }
      H5Id lcpl = check(H5Pcreate(H5P_LINK_CREATE), H5Pclose, shadow, "cannot create lcpl");
      check(H5Pset_create_intermediate_group(lcpl.get(), 1), shadow,
            "cannot enable intermediate groups");
      auto put = [&](const std::string& name, const auto& v, hid_t file_type, hid_t mem_type) {
        const size_t b = first_row(name), total = b + v.size();
        auto r = shadow_.rows.find(name);
        const size_t have = r == shadow_.rows.end() ? kAbsent : r->second;
        const size_t extent = r == shadow_.rows.end() ? kAbsent : shadow_.extent.at(name);
        if (have == total && extent == total) return;
        put_series(file.get(), lcpl.get(), shadow, name, file_type, mem_type, v, b,
                   have == kAbsent ? 0 : std::min(have, total), extent, total);
        shadow_.rows[name] = shadow_.extent[name] = total;
        shadow_.fixed.erase(name);  // (re)created with unlimited size if it was fixed
      };
      for (const auto& [name, v] : f64_) put(name, v, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE);
      for (const auto& [name, v] : i64_) put(name, v, H5T_STD_I64LE, H5T_NATIVE_INT64);
      lcpl.reset();
      fapl.reset();
      if (!file.close()) h5_fail(shadow, "cannot close (flush) file");
    }
    if (lock_fd >= 0) {
      (void)::fsync(lock_fd);
      ::close(lock_fd);  // unlocked before it gets the public name
      lock_fd = -1;
    } else {
      fsync_file(shadow);
    }
    const bool exchanged = swap_names(shadow, path_);
    std::swap(pub_, shadow_);
    if (!exchanged) shadow_ = FileState{};
  } catch (...) {
    if (lock_fd >= 0) ::close(lock_fd);
    std::remove(tmp.c_str());
    if (touched) std::remove(shadow.c_str());
    shadow_ = FileState{};
    throw;
  }
  drop_flushed_rows();
}

// Forgets the rows both files hold (only <path>'s, when the shadow is to be rebuilt from it).
void MetricsFile::drop_flushed_rows() {
  auto held = [](const FileState& f, const std::string& name) -> size_t {
    auto r = f.rows.find(name);
    return r == f.rows.end() ? 0 : r->second;
  };
  auto drop = [&](const std::string& name, auto& v) {
    size_t keep = pub_.valid ? held(pub_, name) : 0;
    if (shadow_.valid) keep = std::min(keep, held(shadow_, name));
    // a fixed-size dataset left in a file will be rewritten whole: keep every row until then
    if (pub_.fixed.count(name) || (shadow_.valid && shadow_.fixed.count(name))) keep = 0;
    const size_t b = first_row(name);
    if (keep <= b) return;
    const size_t n = std::min(keep - b, v.size());
    v.erase(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n));
    begin_[name] = b + n;
  };
  for (auto& [name, v] : f64_) drop(name, v);
  for (auto& [name, v] : i64_) drop(name, v);
}

MetricsFile::MetricsFile(MetricsFile&& o) noexcept
    : path_(std::move(o.path_)),
      attrs_(std::move(o.attrs_)),
      f64_(std::move(o.f64_)),
      i64_(std::move(o.i64_)),
      begin_(std::move(o.begin_)),
      pub_(std::move(o.pub_)),
      shadow_(std::move(o.shadow_)) {
  o.pub_.valid = o.shadow_.valid = false;
}

MetricsFile& MetricsFile::operator=(MetricsFile&& o) noexcept {
  if (this != &o) {
    remove_shadow();
    path_ = std::move(o.path_);
    attrs_ = std::move(o.attrs_);
    f64_ = std::move(o.f64_);
    i64_ = std::move(o.i64_);
    begin_ = std::move(o.begin_);
    pub_ = std::move(o.pub_);
    shadow_ = std::move(o.shadow_);
    o.pub_.valid = o.shadow_.valid = false;
  }
  return *this;
}

MetricsFile::~MetricsFile() { remove_shadow(); }

// The shadow is only needed while the run writes: removed when the writer goes away.
void MetricsFile::remove_shadow() noexcept {
  if (!shadow_.valid) return;
  shadow_.valid = false;
  const std::string shadow = shadow_path(path_);
  dev_t dev = 0;
  ino_t ino = 0;
  if (file_id(shadow, dev, ino) && dev == shadow_.dev && ino == shadow_.ino)
    ::unlink(shadow.c_str());
}

MetricsFile MetricsFile::load(const std::string& path) {
  quiet_hdf5();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw std::runtime_error("metrics file " + path + ": does not exist");
  if (!std::filesystem::is_regular_file(path, ec))
    throw std::runtime_error("metrics file " + path + ": is not a regular file");
  htri_t is = H5Fis_hdf5(path.c_str());
  if (is == 0) throw std::runtime_error("metrics file " + path + ": is not an HDF5 file");
  if (is < 0) h5_fail(path, "cannot be read");

  MetricsFile mf(path);
  H5Id fapl = make_fapl(path, true);
  H5Id file = check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose, path,
                    "cannot open file");
  LoadCtx ctx{path, &mf.attrs_, &mf.f64_, &mf.i64_, &mf.pub_.fixed, {}};
  hsize_t idx = 0;
  if (H5Aiterate2(file.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, attr_cb, &ctx) < 0) {
    if (!ctx.error.empty()) throw std::runtime_error(ctx.error);
    h5_fail(path, "cannot read root attributes");
  }
  if (H5Lvisit(file.get(), H5_INDEX_NAME, H5_ITER_INC, link_cb, &ctx) < 0) {
    if (!ctx.error.empty()) throw std::runtime_error(ctx.error);
    h5_fail(path, "cannot read datasets");
  }
  // flush() continues this very file: it holds every row and attribute read.
  FileState& f = mf.pub_;
  f.valid = file_id(path, f.dev, f.ino);
  for (const auto& [name, v] : mf.f64_) f.rows[name] = f.extent[name] = v.size();
  for (const auto& [name, v] : mf.i64_) f.rows[name] = f.extent[name] = v.size();
  f.attrs = mf.attrs_;
  return mf;
}

}  // namespace lossytp
