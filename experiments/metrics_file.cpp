#include "experiments/metrics_file.h"

#include <hdf5.h>
#include <fcntl.h>
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

// Silences HDF5's automatic error printing once per process; failures become exceptions.
void quiet_hdf5() {
  static const bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

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
// strong close (nothing stays open after H5Fclose), and no file locking where the library has
// the switch (1.10.7+): the writer's temp file is private, and readers must not need locks
// (NFS/Lustre).
H5Id make_fapl(const std::string& path) {
  H5Id fapl = check(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, path, "cannot create access plist");
  check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_EARLIEST, H5F_LIBVER_V18), path,
        "cannot set format version bounds");
  check(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), path, "cannot set close degree");
#if H5_VERSION_GE(1, 10, 7)
  check(H5Pset_file_locking(fapl.get(), false, true), path, "cannot disable file locking");
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

void write_series(hid_t file, hid_t lcpl, const std::string& path, const std::string& name,
                  hid_t file_type, hid_t mem_type, const void* data, size_t n) {
  hsize_t dims[1] = {static_cast<hsize_t>(n)};
  hsize_t maxdims[1] = {H5S_UNLIMITED};
  // Chunks sized to the series (at least 64, at most 4096 rows): short comm series stay
  // small, long ones are not split into thousands of chunks.
  hsize_t chunk[1] = {static_cast<hsize_t>(std::clamp<size_t>(n, 64, 4096))};
  H5Id space = check(H5Screate_simple(1, dims, maxdims), H5Sclose, path,
                     "cannot create dataspace for '" + name + "'");
  H5Id dcpl = check(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, path, "cannot create dcpl");
  check(H5Pset_chunk(dcpl.get(), 1, chunk), path, "cannot set chunking for '" + name + "'");
  H5Id ds = check(H5Dcreate2(file, name.c_str(), file_type, space.get(), lcpl, dcpl.get(),
                             H5P_DEFAULT),
                  H5Dclose, path, "cannot create dataset '" + name + "'");
  if (n > 0)
    check(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), path,
          "cannot write dataset '" + name + "'");
}

void fsync_file(const std::string& p) {
  int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

// ---- reading ---------------------------------------------------------------------------------

struct LoadCtx {
  std::string path;
  std::map<std::string, MetricsFile::Attr>* attrs;
  std::map<std::string, std::vector<double>>* f64;
  std::map<std::string, std::vector<int64_t>>* i64;
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
    hsize_t n = 0;
    H5Sget_simple_extent_dims(space.get(), &n, nullptr);
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

const std::vector<int64_t>* MetricsFile::int_series(const std::string& dataset) const {
  auto it = i64_.find(normalize(dataset));
  return it == i64_.end() ? nullptr : &it->second;
}

void MetricsFile::truncate_after(const std::string& group, int64_t iteration) {
  const std::string g = normalize(group);
  // Cut point of every "<g>/.../iteration" series: the first row whose iteration > iteration.
  // A series is cut at the cut point of the deepest iteration series whose group contains it.
  std::map<std::string, size_t> cut;  // group prefix ("train/") -> rows to keep
  auto add_cut = [&](const std::string& name, auto values_begin, auto values_end) {
    if (!ends_with_iteration(name) || name.size() < 10 || name[name.size() - 10] != '/') return;
    std::string prefix = name.substr(0, name.size() - 9);  // keeps the trailing '/'
    if (prefix.compare(0, g.size() + 1, g + "/") != 0) return;
    size_t k = 0;
    for (auto it = values_begin; it != values_end; ++it, ++k)
      if (static_cast<double>(*it) > static_cast<double>(iteration)) break;
    cut[prefix] = k;
  };
  for (const auto& [name, v] : i64_) add_cut(name, v.begin(), v.end());
  for (const auto& [name, v] : f64_) add_cut(name, v.begin(), v.end());
  if (cut.empty()) return;
  auto apply = [&](const std::string& name, auto& v) {
    const std::string* best = nullptr;
    for (const auto& [prefix, k] : cut)
      if (name.compare(0, prefix.size(), prefix) == 0 && (!best || prefix.size() > best->size()))
        best = &prefix;
    if (best && v.size() > cut[*best]) v.resize(cut[*best]);
  };
  for (auto& [name, v] : i64_) apply(name, v);
  for (auto& [name, v] : f64_) apply(name, v);
}

void MetricsFile::flush() const {
  quiet_hdf5();
  const std::string tmp = path_ + ".tmp";
  try {
    {
      H5Id fapl = make_fapl(tmp);
      H5Id file = check(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose,
                        tmp, "cannot create file");
      for (const auto& [name, value] : attrs_) write_attr(file.get(), tmp, name, value);
      H5Id lcpl = check(H5Pcreate(H5P_LINK_CREATE), H5Pclose, tmp, "cannot create lcpl");
      check(H5Pset_create_intermediate_group(lcpl.get(), 1), tmp,
            "cannot enable intermediate groups");
      for (const auto& [name, v] : f64_)
        write_series(file.get(), lcpl.get(), tmp, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE,
                     v.data(), v.size());
      for (const auto& [name, v] : i64_)
        write_series(file.get(), lcpl.get(), tmp, name, H5T_STD_I64LE, H5T_NATIVE_INT64,
                     v.data(), v.size());
      lcpl.reset();
      fapl.reset();
      if (!file.close()) h5_fail(tmp, "cannot close (flush) file");
    }
    fsync_file(tmp);
    if (std::rename(tmp.c_str(), path_.c_str()) != 0)
      throw std::runtime_error("metrics file " + path_ + ": cannot rename " + tmp + " over it: " +
                               std::strerror(errno));
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
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
  H5Id fapl = make_fapl(path);
  H5Id file = check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose, path,
                    "cannot open file");
  LoadCtx ctx{path, &mf.attrs_, &mf.f64_, &mf.i64_, {}};
  hsize_t idx = 0;
  if (H5Aiterate2(file.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, attr_cb, &ctx) < 0) {
    if (!ctx.error.empty()) throw std::runtime_error(ctx.error);
    h5_fail(path, "cannot read root attributes");
  }
  if (H5Lvisit(file.get(), H5_INDEX_NAME, H5_ITER_INC, link_cb, &ctx) < 0) {
    if (!ctx.error.empty()) throw std::runtime_error(ctx.error);
    h5_fail(path, "cannot read datasets");
  }
  return mf;
}

}  // namespace lossytp
