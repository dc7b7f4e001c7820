#include "experiments/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>

namespace lossytp {

namespace fs = std::filesystem;

namespace {

constexpr char kMagicV1[8] = {'L', 'T', 'P', 'C', 'K', 'P', 'T', '1'};  // no checksum
constexpr char kMagicV2[8] = {'L', 'T', 'P', 'C', 'K', 'P', 'T', '2'};  // XXH3-64 trailer
constexpr char kMagicV3[8] = {'L', 'T', 'P', 'C', 'K', 'P', 'T', '3'};  // + sections, trailer
// Version 3: the sections follow the moments as a u64 byte count S and S bytes of (8-byte tag,
// u64 length, payload) records; readers skip tags they do not know.
constexpr char kTagNetLinks[8] = {'n', 'e', 't', 'l', 'i', 'n', 'k', 's'};  // net::LinkStates
constexpr uint64_t kMaxSections = uint64_t{1} << 32;  // a sanity bound on S

struct Header {
  char magic[8];
  int64_t iteration;
  int64_t numel;
  int64_t adam_t;
  int32_t rank;
  int32_t tp_rank;
  int32_t tp_size;
  int32_t opt_shards;  // 0: AdamW moments of the whole arena; D > 1: of one of D DP shards (ZeRO-1)
};
static_assert(sizeof(Header) == 48);
constexpr uint64_t kTrailer = sizeof(uint64_t);

fs::path dir_of(const std::string& run_dir) { return fs::path(run_dir) / "checkpoint"; }
fs::path file_of(const std::string& run_dir, int rank, int64_t it) {
  return dir_of(run_dir) / ("rank" + std::to_string(rank) + "-it" + std::to_string(it) + ".bin");
}

// rank<R>-it<I>.bin exactly; false for anything else (temporary files included).
bool parse_name(const std::string& name, int* rank, int64_t* it) {
  int r = -1;
  long long i = -1;
  if (std::sscanf(name.c_str(), "rank%d-it%lld.bin", &r, &i) != 2 || r < 0 || i < 0) return false;
  if (name != "rank" + std::to_string(r) + "-it" + std::to_string(i) + ".bin") return false;
  *rank = r;
  *it = i;
  return true;
}

struct XxhState {
  XXH3_state_t* s = XXH3_createState();
  XxhState() {
    if (!s) throw std::bad_alloc();
    XXH3_64bits_reset(s);
  }
  ~XxhState() { XXH3_freeState(s); }
  void update(const void* p, size_t n) { XXH3_64bits_update(s, p, n); }
  uint64_t digest() const { return XXH3_64bits_digest(s); }
};

// Testing: LOSSYTP_DEBUG_ENOSPC_AFTER=K makes this rank's checkpoint writes (a rank is a process,
// or a thread under --virtual-ranks) fail with ENOSPC once K bytes have been written in all, as a
// disk that fills up would. Read at every write, so that tests can set it.
int64_t enospc_budget() {
  const char* e = std::getenv("LOSSYTP_DEBUG_ENOSPC_AFTER");
  return e && *e ? std::atoll(e) : int64_t{-1};
}
thread_local int64_t t_bytes_written = 0;

// write(2) of all n bytes; false with errno set when it fails.
bool write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    size_t chunk = std::min<size_t>(n, size_t{1} << 30);
    if (const int64_t budget = enospc_budget(); budget >= 0) {
      if (t_bytes_written >= budget) {
        errno = ENOSPC;
        return false;
      }
      chunk = std::min<size_t>(chunk, static_cast<size_t>(budget - t_bytes_written));
    }
    const ssize_t w = ::write(fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    t_bytes_written += w;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// A rename is durable once its directory is synced.
void sync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

struct Piece {
  const void* data;
  size_t bytes;
};

// Writes the pieces to path via path.tmp + fsync + rename, followed by the XXH3-64 of them when
// `checksum`. On failure the temporary file is removed and path is untouched.
void write_atomic(const fs::path& path, const std::vector<Piece>& pieces, bool checksum) {
  const fs::path tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot write checkpoint file " + tmp.string() + ": " + std::strerror(errno));
  XxhState h;
  bool ok = true;
  for (const Piece& p : pieces) {
    ok = write_all(fd, p.data, p.bytes);
    if (!ok) break;
    if (checksum) h.update(p.data, p.bytes);
  }
  if (ok && checksum) {
    const uint64_t sum = h.digest();
    ok = write_all(fd, &sum, sizeof sum);
  }
  int err = ok ? 0 : errno;
  if (ok && ::fsync(fd) != 0) {
    ok = false;
    err = errno;
  }
  if (::close(fd) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    throw std::runtime_error("writing checkpoint file " + path.string() + " failed: " + std::strerror(err) +
                             (err == ENOSPC ? " (the disk is full)" : ""));
  }
  fs::rename(tmp, path);
  sync_dir(path.parent_path());
}

// Reads a file's header; "" or what is wrong with it.
std::string read_header(std::ifstream& f, const fs::path& path, Header* h) {
  f.read(reinterpret_cast<char*>(h), sizeof *h);
  if (!f) return "checkpoint file " + path.string() + " is truncated (shorter than its header)";
  if (std::memcmp(h->magic, kMagicV2, 8) != 0 && std::memcmp(h->magic, kMagicV1, 8) != 0 &&
      std::memcmp(h->magic, kMagicV3, 8) != 0)
    return "checkpoint file " + path.string() + " is corrupt or not a lossytp checkpoint (bad magic)";
  if (h->numel < 0 || h->numel > (int64_t{1} << 40) || h->opt_shards < 0 || h->opt_shards > (1 << 20))
    return "checkpoint file " + path.string() + " is corrupt (bad header)";
  return "";
}

bool has_sections(const Header& h) { return std::memcmp(h.magic, kMagicV3, 8) == 0; }
bool has_checksum(const Header& h) { return std::memcmp(h.magic, kMagicV2, 8) == 0 || has_sections(h); }

// Floats of each AdamW moment in the file.
uint64_t moment_numel(const Header& h) {
  const size_t n = static_cast<size_t>(h.numel);
  return h.opt_shards > 0 ? optimizer_shard_numel(n, h.opt_shards) : n;
}

// Bytes of the header, parameters and moments.
uint64_t arenas_end(const Header& h) {
  return sizeof(Header) + (static_cast<uint64_t>(h.numel) + 2 * moment_numel(h)) * sizeof(float);
}

// sections: version 3, the byte count S of the sections (the u64 before them is counted here).
uint64_t expected_size(const Header& h, uint64_t sections = 0) {
  return arenas_end(h) + (has_sections(h) ? sizeof(uint64_t) + sections : 0) + (has_checksum(h) ? kTrailer : 0);
}

// Version 3: S, read from the file; "" or what is wrong.
std::string read_sections_size(const fs::path& path, const Header& h, uint64_t* sections) {
  *sections = 0;
  if (!has_sections(h)) return "";
  std::ifstream f(path, std::ios::binary);
  f.seekg(static_cast<std::streamoff>(arenas_end(h)));
  f.read(reinterpret_cast<char*>(sections), sizeof *sections);
  if (!f) return "checkpoint file " + path.string() + " is truncated (its sections are missing)";
  if (*sections > kMaxSections) return "checkpoint file " + path.string() + " is corrupt (bad section size)";
  return "";
}

// "" when the file's size is what its header (and, version 3, its section size) announces.
std::string check_size(const fs::path& path, const Header& h) {
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  uint64_t sections = 0;
  if (!ec && size >= arenas_end(h) + sizeof sections)
    if (std::string bad = read_sections_size(path, h, &sections); !bad.empty()) return bad;
  const uint64_t want = expected_size(h, sections);
  if (ec || size == want) return "";
  return "checkpoint file " + path.string() + (size < want ? " is truncated: " : " is corrupt: ") +
         std::to_string(size) + " bytes, its header announces " + std::to_string(want);
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

}  // namespace

std::string checkpoint_file(const std::string& run_dir, int rank, int64_t iteration) {
  return file_of(run_dir, rank, iteration).string();
}

// The tensor itself when it lives on the host, else a host copy.
static Tensor on_host(const Tensor& t) { return t.device() == Device::CPU ? t : t.to(Device::CPU); }

void save_checkpoint(const std::string& run_dir, Backend& run, int64_t iteration,
                     ParamStore& params, AdamW& opt, const std::string& config_json, int keep,
                     const std::vector<uint8_t>& net_links) {
  const int rank = run.rank();
  if (rank == 0) fs::create_directories(dir_of(run_dir));
  run.barrier();
  Header h{};
  // version 2 unless there are sections to save: runs without them write what they always did
  std::memcpy(h.magic, net_links.empty() ? kMagicV2 : kMagicV3, 8);
  h.iteration = iteration;
  h.numel = static_cast<int64_t>(params.numel());
  h.adam_t = opt.t();
  h.rank = rank;
  h.tp_rank = params.tp_rank();
  h.tp_size = params.tp_size();
  h.opt_shards = opt.shards() > 1 ? opt.shards() : 0;
  // device arenas are written through host copies
  const Tensor host[3] = {on_host(params.values()), on_host(opt.m()), on_host(opt.v())};
  const size_t bytes = params.numel() * sizeof(float), mbytes = opt.numel() * sizeof(float);
  std::vector<Piece> pieces = {
      {&h, sizeof h}, {host[0].data(), bytes}, {host[1].data(), mbytes}, {host[2].data(), mbytes}};
  const uint64_t links_len = net_links.size();
  const uint64_t sections = sizeof kTagNetLinks + sizeof links_len + links_len;
  if (!net_links.empty()) {
    pieces.push_back({&sections, sizeof sections});
    pieces.push_back({kTagNetLinks, sizeof kTagNetLinks});
    pieces.push_back({&links_len, sizeof links_len});
    pieces.push_back({net_links.data(), net_links.size()});
  }
  try {
    write_atomic(file_of(run_dir, rank, iteration), pieces, true);
  } catch (const std::exception& e) {
    const int64_t prev = latest_checkpoint(run_dir);
    throw std::runtime_error(std::string(e.what()) + "; the checkpoint of iteration " + std::to_string(iteration) +
                             " was not made" +
                             (prev >= 0 ? ", the previous one (iteration " + std::to_string(prev) + ") is intact"
                                        : std::string()));
  }
  run.barrier();  // every rank's file is complete before it becomes the latest
  if (rank != 0) return;
  const fs::path d = dir_of(run_dir);
  const std::string cfg_text = config_json + "\n", latest_text = std::to_string(iteration) + "\n";
  write_atomic(d / "config.json", {{cfg_text.data(), cfg_text.size()}}, false);
  write_atomic(d / "latest", {{latest_text.data(), latest_text.size()}}, false);
  // Only now may older checkpoints go: the newest `keep` complete ones at or before this one stay.
  // Files of later iterations and temporary files are left by an abandoned attempt.
  std::map<int64_t, std::vector<fs::path>, std::greater<>> files;
  for (const auto& e : fs::directory_iterator(d)) {
    const std::string name = e.path().filename().string();
    int r = 0;
    int64_t it = 0;
    std::error_code ec;
    if (parse_name(name, &r, &it))
      files[it].push_back(e.path());
    else if (name.rfind("rank", 0) == 0 && name.size() > 8 && name.compare(name.size() - 8, 8, ".bin.tmp") == 0)
      fs::remove(e.path(), ec);
  }
  int kept = 0;
  for (const auto& [it, paths] : files) {
    const bool complete = static_cast<int>(paths.size()) == run.size();
    if (it <= iteration && complete && (keep == 0 || kept < keep)) {
      ++kept;
      continue;
    }
    for (const auto& p : paths) {
      std::error_code ec;
      fs::remove(p, ec);
    }
  }
}

int64_t latest_checkpoint(const std::string& run_dir) {
  std::ifstream l(dir_of(run_dir) / "latest");
  int64_t it = -1;
  if (!(l >> it)) return -1;
  return it;
}

std::vector<int64_t> checkpoint_iterations(const std::string& run_dir, int nranks) {
  const int64_t latest = latest_checkpoint(run_dir);
  std::map<int64_t, int, std::greater<>> count;
  std::error_code ec;
  if (latest < 0 || !fs::is_directory(dir_of(run_dir), ec)) return {};
  for (const auto& e : fs::directory_iterator(dir_of(run_dir), ec)) {
    int r = 0;
    int64_t it = 0;
    if (parse_name(e.path().filename().string(), &r, &it) && r < nranks && it <= latest) ++count[it];
  }
  std::vector<int64_t> out;
  for (const auto& [it, n] : count)
    if (n == nranks) out.push_back(it);
  return out;
}

std::string checkpoint_config(const std::string& run_dir) {
  std::ifstream c(dir_of(run_dir) / "config.json");
  if (!c) return "";
  std::stringstream ss;
  ss << c.rdbuf();
  return ss.str();
}

CheckpointCheck verify_checkpoint_file(const std::string& run_dir, int rank, int64_t iteration) {
  CheckpointCheck c;
  const fs::path path = file_of(run_dir, rank, iteration);
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    c.problem = "checkpoint file " + path.string() + " is missing";
    return c;
  }
  Header h{};
  if (c.problem = read_header(f, path, &h); !c.problem.empty()) return c;
  if (c.problem = check_size(path, h); !c.problem.empty()) return c;
  c.checksummed = has_checksum(h);
  if (c.checksummed) {
    XxhState x;
    x.update(&h, sizeof h);
    uint64_t sections = 0;
    if (c.problem = read_sections_size(path, h, &sections); !c.problem.empty()) return c;
    uint64_t left = expected_size(h, sections) - sizeof h - kTrailer;
    std::vector<char> buf(size_t{4} << 20);
    while (left > 0 && f) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
      f.read(buf.data(), static_cast<std::streamsize>(n));
      x.update(buf.data(), n);
      left -= n;
    }
    uint64_t stored = 0;
    f.read(reinterpret_cast<char*>(&stored), sizeof stored);
    if (!f) {
      c.problem = "checkpoint file " + path.string() + " cannot be read";
      return c;
    }
    if (stored != x.digest()) {
      c.problem = "checkpoint file " + path.string() + " is corrupt (its XXH3 checksum does not match its contents)";
      return c;
    }
  }
  if (h.iteration != iteration || h.rank != rank) {
    c.problem = "checkpoint file " + path.string() + " holds rank " + std::to_string(h.rank) + "'s iteration " +
                std::to_string(h.iteration) + ", not what its name says";
    return c;
  }
  c.ok = true;
  return c;
}

ResumePoint find_resume_point(const std::string& run_dir, int nranks) {
  ResumePoint rp;
  const int64_t latest = latest_checkpoint(run_dir);
  if (latest < 0) {
    rp.problems.push_back("no checkpoint in " + dir_of(run_dir).string());
    return rp;
  }
  // `latest` first even when a file of it is missing (that is a problem to report), then the
  // older complete ones.
  std::vector<int64_t> candidates = {latest};
  for (int64_t it : checkpoint_iterations(run_dir, nranks))
    if (it < latest) candidates.push_back(it);
  for (int64_t it : candidates) {
    std::vector<std::string> bad, unchecked;
    for (int r = 0; r < nranks; ++r) {
      const CheckpointCheck c = verify_checkpoint_file(run_dir, r, it);
      if (!c.ok) bad.push_back(c.problem);
      else if (!c.checksummed)
        unchecked.push_back("checkpoint file " + file_of(run_dir, r, it).string() +
                            " has no checksum (written by lossytp 0.1.0): its contents cannot be verified");
    }
    if (bad.empty()) {
      rp.iteration = it;
      rp.warnings = unchecked;
      return rp;
    }
    rp.problems.push_back("the checkpoint of iteration " + std::to_string(it) + " is unusable: " + join(bad, "; "));
  }
  return rp;
}

void load_checkpoint(const std::string& run_dir, int rank, int64_t iteration, ParamStore& params,
                     AdamW& opt, std::vector<uint8_t>* net_links) {
  const fs::path path = file_of(run_dir, rank, iteration);
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("checkpoint file " + path.string() + " is missing");
  Header h{};
  if (const std::string bad = read_header(f, path, &h); !bad.empty()) throw std::runtime_error(bad);
  if (const std::string bad = check_size(path, h); !bad.empty()) throw std::runtime_error(bad);
  if (h.iteration != iteration || h.rank != rank || h.tp_rank != params.tp_rank() ||
      h.tp_size != params.tp_size() || h.numel != static_cast<int64_t>(params.numel()))
    throw std::runtime_error("checkpoint file " + path.string() +
                             " was written by a different layout or model (tp " +
                             std::to_string(h.tp_size) + ", " + std::to_string(h.numel) +
                             " parameters per rank), or its header is corrupt");
  if (h.opt_shards != (opt.shards() > 1 ? opt.shards() : 0)) {
    auto what = [](int shards) {
      return shards > 1 ? "an optimizer state sharded over " + std::to_string(shards) +
                              " DP ranks (--use-distributed-optimizer)"
                        : std::string("a whole optimizer state on every rank (no --use-distributed-optimizer)");
    };
    throw std::runtime_error("checkpoint file " + path.string() + " holds " + what(h.opt_shards) + ", this run keeps " +
                             what(opt.shards()) + ": resume with the same --use-distributed-optimizer setting and DP size");
  }
  // Read into host buffers, checksum them, and only then hand them to the device arenas.
  XxhState x;
  x.update(&h, sizeof h);
  Tensor* arenas[3] = {&params.values(), &opt.m(), &opt.v()};
  std::vector<Tensor> host;
  for (Tensor* a : arenas) {
    host.push_back(on_host(*a));
    const size_t bytes = (a == &params.values() ? params.numel() : opt.numel()) * sizeof(float);
    f.read(reinterpret_cast<char*>(host.back().data()), static_cast<std::streamsize>(bytes));
    if (!f) throw std::runtime_error("checkpoint file " + path.string() + " is truncated");
    x.update(host.back().data(), bytes);
  }
  // Version 3: the sections (checksummed with the rest), parsed once the checksum holds.
  std::vector<char> sections;
  if (has_sections(h)) {
    uint64_t n = 0;
    f.read(reinterpret_cast<char*>(&n), sizeof n);
    if (!f || n > kMaxSections) throw std::runtime_error("checkpoint file " + path.string() + " is truncated");
    sections.resize(static_cast<size_t>(n));
    f.read(sections.data(), static_cast<std::streamsize>(n));
    if (!f) throw std::runtime_error("checkpoint file " + path.string() + " is truncated");
    x.update(&n, sizeof n);
    x.update(sections.data(), sections.size());
  }
  if (has_checksum(h)) {
    uint64_t stored = 0;
    f.read(reinterpret_cast<char*>(&stored), sizeof stored);
    if (!f) throw std::runtime_error("checkpoint file " + path.string() + " is truncated");
    if (stored != x.digest())
      throw std::runtime_error("checkpoint file " + path.string() +
                               " is corrupt (its XXH3 checksum does not match its contents)");
  }
  std::vector<uint8_t> links;  // none in version 1 and 2 files: every chain starts fresh
  for (size_t pos = 0; pos < sections.size();) {
    uint64_t len = 0;
    if (sections.size() - pos < sizeof kTagNetLinks + sizeof len)
      throw std::runtime_error("checkpoint file " + path.string() + " is corrupt (a truncated section)");
    const char* tag = sections.data() + pos;
    std::memcpy(&len, tag + sizeof kTagNetLinks, sizeof len);
    pos += sizeof kTagNetLinks + sizeof len;
    if (len > sections.size() - pos)
      throw std::runtime_error("checkpoint file " + path.string() + " is corrupt (a truncated section)");
    if (std::memcmp(tag, kTagNetLinks, sizeof kTagNetLinks) == 0)
      links.assign(sections.data() + pos, sections.data() + pos + len);
    pos += static_cast<size_t>(len);
  }
  for (int i = 0; i < 3; ++i)
    if (arenas[i]->device() != Device::CPU) arenas[i]->copy_from_host(host[i].data());
  opt.set_t(h.adam_t);
  if (net_links) *net_links = std::move(links);
}

std::vector<float> read_checkpoint_values(const std::string& run_dir, int rank, int64_t iteration,
                                          int* tp_rank, int* tp_size) {
  const fs::path path = file_of(run_dir, rank, iteration);
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("checkpoint file " + path.string() + " is missing");
  Header h{};
  if (const std::string bad = read_header(f, path, &h); !bad.empty()) throw std::runtime_error(bad);
  if (const std::string bad = check_size(path, h); !bad.empty()) throw std::runtime_error(bad);
  std::vector<float> v(static_cast<size_t>(h.numel));
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  if (!f) throw std::runtime_error("checkpoint file " + path.string() + " is truncated");
  *tp_rank = h.tp_rank;
  *tp_size = h.tp_size;
  return v;
}

int64_t load_intact_checkpoint(const std::string& run_dir, Backend& run, ParamStore& params, AdamW& opt,
                               std::string* note, std::vector<uint8_t>* net_links) {
  const int rank = run.rank(), size = run.size();
  // Rank 0 lists the candidates: `latest`, then the older complete checkpoints.
  std::vector<int64_t> cands;
  if (rank == 0) {
    const int64_t latest = latest_checkpoint(run_dir);
    if (latest >= 0) cands.push_back(latest);
    for (int64_t it : checkpoint_iterations(run_dir, size))
      if (it < latest) cands.push_back(it);
  }
  int64_t n = static_cast<int64_t>(cands.size());
  run.broadcast(&n, sizeof n, 0);
  if (n == 0) throw std::runtime_error("--load " + run_dir + ": no checkpoint there");
  cands.resize(static_cast<size_t>(n));
  run.broadcast(cands.data(), cands.size() * sizeof(int64_t), 0);
  std::vector<std::string> problems;
  for (int64_t it : cands) {
    std::string err;
    try {
      load_checkpoint(run_dir, rank, it, params, opt, net_links);
    } catch (const std::exception& e) {
      err = e.what();
    }
    std::vector<double> failed(static_cast<size_t>(size), 0.0);
    failed[static_cast<size_t>(rank)] = err.empty() ? 0.0 : 1.0;
    run.all_reduce_f64(failed.data(), failed.size(), ReduceOp::Sum);
    std::vector<std::string> bad;
    for (int r = 0; r < size; ++r) {
      if (failed[static_cast<size_t>(r)] == 0.0) continue;
      if (r == rank) bad.push_back(err);
      else if (rank == 0) {  // name the other rank's file and why, reading it here (a rare path)
        const CheckpointCheck c = verify_checkpoint_file(run_dir, r, it);
        bad.push_back(c.ok ? "rank " + std::to_string(r) + " could not load " + checkpoint_file(run_dir, r, it)
                           : c.problem);
      }
    }
    if (bad.empty() && std::all_of(failed.begin(), failed.end(), [](double v) { return v == 0.0; })) {
      if (note && !problems.empty())
        *note = "resumed from the checkpoint of iteration " + std::to_string(it) + ", the newest intact one (" +
                join(problems, "; ") + ")";
      return it;
    }
    problems.push_back("the checkpoint of iteration " + std::to_string(it) + " is unusable: " +
                       (bad.empty() ? "a file of another rank failed verification" : join(bad, "; ")));
  }
  throw std::runtime_error("--load " + run_dir + ": no intact checkpoint: " + join(problems, "; "));
}

}  // namespace lossytp
