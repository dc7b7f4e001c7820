#include "experiments/checkpoint.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unistd.h>

namespace lossytp {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'L', 'T', 'P', 'C', 'K', 'P', 'T', '1'};

struct Header {
  char magic[8];
  int64_t iteration;
  int64_t numel;
  int64_t adam_t;
  int32_t rank;
  int32_t tp_rank;
  int32_t tp_size;
  int32_t reserved;
};

fs::path dir_of(const std::string& run_dir) { return fs::path(run_dir) / "checkpoint"; }
fs::path file_of(const std::string& run_dir, int rank, int64_t it) {
  return dir_of(run_dir) / ("rank" + std::to_string(rank) + "-it" + std::to_string(it) + ".bin");
}

// Writes bytes to path via path.tmp + fsync + rename.
void write_atomic(const fs::path& path, const std::string& head, const float* const* parts,
                  const size_t* counts, int nparts) {
  const fs::path tmp = path.string() + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write checkpoint " + tmp.string() + ": " + std::strerror(errno));
  bool ok = std::fwrite(head.data(), 1, head.size(), f) == head.size();
  for (int i = 0; i < nparts && ok; ++i)
    ok = std::fwrite(parts[i], sizeof(float), counts[i], f) == counts[i];
  ok = ok && std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw std::runtime_error("writing checkpoint " + path.string() + " failed (disk full?)");
  }
  fs::rename(tmp, path);
}

}  // namespace

// The tensor itself when it lives on the host, else a host copy.
static Tensor on_host(const Tensor& t) { return t.device() == Device::CPU ? t : t.to(Device::CPU); }

void save_checkpoint(const std::string& run_dir, Backend& run, int64_t iteration,
                     ParamStore& params, AdamW& opt, const std::string& config_json) {
  const int rank = run.rank();
  if (rank == 0) fs::create_directories(dir_of(run_dir));
  run.barrier();
  Header h{};
  std::memcpy(h.magic, kMagic, 8);
  h.iteration = iteration;
  h.numel = static_cast<int64_t>(params.numel());
  h.adam_t = opt.t();
  h.rank = rank;
  h.tp_rank = params.tp_rank();
  h.tp_size = params.tp_size();
  // device arenas are written through host copies
  const Tensor host[3] = {on_host(params.values()), on_host(opt.m()), on_host(opt.v())};
  const float* parts[3] = {host[0].data(), host[1].data(), host[2].data()};
  const size_t counts[3] = {params.numel(), params.numel(), params.numel()};
  write_atomic(file_of(run_dir, rank, iteration), std::string(reinterpret_cast<const char*>(&h), sizeof h),
               parts, counts, 3);
  run.barrier();  // every rank's file is complete before it becomes the latest
  if (rank != 0) return;
  const fs::path d = dir_of(run_dir);
  {
    std::ofstream c(d / "config.json.tmp");
    c << config_json << "\n";
  }
  fs::rename(d / "config.json.tmp", d / "config.json");
  {
    std::ofstream l(d / "latest.tmp");
    l << iteration << "\n";
  }
  fs::rename(d / "latest.tmp", d / "latest");
  // older checkpoints are no longer needed
  for (const auto& e : fs::directory_iterator(d)) {
    const std::string name = e.path().filename().string();
    const size_t it_pos = name.find("-it");
    if (name.rfind("rank", 0) != 0 || it_pos == std::string::npos) continue;
    const int64_t it = std::atoll(name.c_str() + it_pos + 3);
    if (it != iteration) {
      std::error_code ec;
      fs::remove(e.path(), ec);
    }
  }
}

int64_t latest_checkpoint(const std::string& run_dir) {
  std::ifstream l(dir_of(run_dir) / "latest");
  int64_t it = -1;
  if (!(l >> it)) return -1;
  return it;
}

std::string checkpoint_config(const std::string& run_dir) {
  std::ifstream c(dir_of(run_dir) / "config.json");
  if (!c) return "";
  std::stringstream ss;
  ss << c.rdbuf();
  return ss.str();
}

void load_checkpoint(const std::string& run_dir, int rank, int64_t iteration, ParamStore& params,
                     AdamW& opt) {
  const fs::path path = file_of(run_dir, rank, iteration);
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("checkpoint file " + path.string() + " is missing");
  Header h{};
  f.read(reinterpret_cast<char*>(&h), sizeof h);
  if (!f || std::memcmp(h.magic, kMagic, 8) != 0)
    throw std::runtime_error("checkpoint file " + path.string() + " is not a lossytp checkpoint");
  if (h.iteration != iteration || h.rank != rank || h.tp_rank != params.tp_rank() ||
      h.tp_size != params.tp_size() || h.numel != static_cast<int64_t>(params.numel()))
    throw std::runtime_error("checkpoint file " + path.string() +
                             " was written by a different layout or model (tp " +
                             std::to_string(h.tp_size) + ", " + std::to_string(h.numel) +
                             " parameters per rank)");
  Tensor* arenas[3] = {&params.values(), &opt.m(), &opt.v()};
  for (Tensor* a : arenas) {
    Tensor host = on_host(*a);
    f.read(reinterpret_cast<char*>(host.data()), static_cast<std::streamsize>(params.numel() * sizeof(float)));
    if (!f) throw std::runtime_error("checkpoint file " + path.string() + " is truncated");
    if (a->device() != Device::CPU) a->copy_from_host(host.data());
  }
  opt.set_t(h.adam_t);
}

}  // namespace lossytp
