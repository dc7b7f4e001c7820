#include "experiments/grid.h"

#include "experiments/dry_run.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"

#include <mpi.h>

#include "experiments/toml.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "experiments/checkpoint.h"
#include "experiments/collective_errors.h"
#include "experiments/metrics_file.h"
#include "experiments/run_control.h"
#include "experiments/trainer.h"
#include "sim/local_backend.h"
#include "kernels/philox.h"

namespace lossytp {

namespace fs = std::filesystem;

namespace {

using KV = std::vector<std::pair<std::string, std::string>>;

std::string hex64(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string normalise_key(std::string k) {
  std::replace(k.begin(), k.end(), '_', '-');
  if (k == "seeds") k = "seed";
  return k;
}

// Short names for the id.
std::string id_key(const std::string& k) {
  static const std::map<std::string, std::string> alias = {
      {"tensor-model-parallel-size", "tp"}, {"data-parallel-size", "dp"},
      {"pipeline-model-parallel-size", "pp"},
      {"micro-batch-size", "mbs"},          {"global-batch-size", "gbs"},
      {"num-layers", "layers"},             {"hidden-size", "hidden"},
      {"num-attention-heads", "heads"},     {"seq-length", "seq"}};
  auto it = alias.find(k);
  return it == alias.end() ? k : it->second;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::invalid_argument("cannot read grid file '" + path + "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Keys of a table in file order is not available from toml++ (its tables are sorted), so runs
// and ids use the sorted order, with the seed last: stable across invocations.
std::vector<std::string> ordered_keys(const std::vector<std::string>& keys) {
  std::vector<std::string> k = keys;
  std::sort(k.begin(), k.end(), [](const std::string& a, const std::string& b) {
    if ((a == "seed") != (b == "seed")) return b == "seed";
    return a < b;
  });
  return k;
}

std::string make_id(const std::vector<std::pair<std::string, std::string>>& parts) {
  std::string id;
  for (const auto& [k, v] : parts) id += (id.empty() ? "" : "_") + id_key(k) + "=" + id_value(k, v);
  if (id.empty()) id = "base";
  if (id.size() > 120) id = id.substr(0, 80) + "_" + hex64(fnv1a64(id.c_str())).substr(0, 12);
  return id;
}

KV table_to_kv(const toml::table& t, const std::string& where, const CLI::App& app) {
  KV kv;
  for (const auto& [k, v] : t) {
    const std::string key = normalise_key(std::string(k.str()));
    if (key == "out" || key == "load" || key == "config" || key == "overwrite")
      throw std::invalid_argument(where + ": key '" + std::string(k.str()) + "' is set by the grid runner");
    flag_for_key(key, app, where);
    kv.emplace_back(key, toml_value_to_arg(v, where, key));
  }
  return kv;
}

bool has_key(const KV& kv, const std::string& key) {
  for (const auto& p : kv) if (p.first == key) return true;
  return false;
}

}  // namespace

std::string id_value(const std::string& key, const std::string& value) {
  std::string v = value;
  if (key == "net") {
    // "caat:p=0.5+ge:preset=one" -> "caat-0.5+ge-one": model names and values, no key names
    std::string out;
    size_t start = 0;
    while (start <= v.size()) {
      size_t plus = v.find('+', start);
      std::string part = v.substr(start, plus == std::string::npos ? std::string::npos : plus - start);
      size_t colon = part.find(':');
      std::string text = part.substr(0, colon);
      if (colon != std::string::npos) {
        std::stringstream ss(part.substr(colon + 1));
        std::string kvp;
        while (std::getline(ss, kvp, ',')) {
          size_t eq = kvp.find('=');
          text += "-" + (eq == std::string::npos ? kvp : kvp.substr(eq + 1));
        }
      }
      out += (out.empty() ? "" : "+") + text;
      if (plus == std::string::npos) break;
      start = plus + 1;
    }
    v = out;
  } else if (key == "data" || key == "eval-data") {
    // a data file by its name without folder and extension; "" (the built-in corpus) as "builtin"
    v = v.empty() ? "builtin" : fs::path(v).stem().string();
  }
  for (char& c : v)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '+') c = '-';
  return v;
}

Grid load_grid(const std::string& path, const std::string& out_dir) {
  Grid g;
  g.file = path;
  const std::string text = read_text(path);
  g.file_hash = hex64(fnv1a64(text.c_str()));
  const toml::table root = parse_toml_text(text, path);
  CLI::App app;
  TrainOptions probe;
  add_train_options(app, probe);

  KV base;
  std::vector<std::pair<std::string, std::vector<std::string>>> sweep;
  std::vector<KV> explicit_runs;
  for (const auto& [k, node] : root) {
    const std::string key(k.str());
    if (key == "base") {
      if (!node.is_table()) throw std::invalid_argument(path + ": [base] must be a table");
      base = table_to_kv(*node.as_table(), path + " [base]", app);
    } else if (key == "sweep" || key == "seeds") {
      toml::table single;
      const toml::table* t = node.as_table();
      if (key == "seeds") { single.insert("seeds", node); t = &single; }
      if (!t) throw std::invalid_argument(path + ": [sweep] must be a table");
      for (const auto& [sk, sv] : *t) {
        const std::string skey = normalise_key(std::string(sk.str()));
        const std::string where = path + " [sweep] " + std::string(sk.str());
        if (skey == "out" || skey == "load" || skey == "config")
          throw std::invalid_argument(where + ": this key is set by the grid runner");
        flag_for_key(skey, app, path + " [sweep]");
        const toml::array* arr = sv.as_array();
        if (!arr) throw std::invalid_argument(where + ": a sweep value must be an array, e.g. [1, 2]");
        if (arr->empty()) throw std::invalid_argument(where + ": empty sweep (give at least one value)");
        std::vector<std::string> values;
        for (const auto& e : *arr) values.push_back(toml_value_to_arg(e, where, skey));
        for (auto& s : sweep)
          if (s.first == skey) throw std::invalid_argument(where + ": swept twice");
        sweep.emplace_back(skey, values);
      }
    } else if (key == "runs") {
      const toml::array* arr = node.as_array();
      if (!arr || !arr->is_array_of_tables())
        throw std::invalid_argument(path + ": 'runs' must be an array of tables ([[runs]])");
      int i = 0;
      for (const auto& e : *arr)
        explicit_runs.push_back(table_to_kv(*e.as_table(), path + " [[runs]] #" + std::to_string(++i), app));
    } else {
      throw std::invalid_argument(path + ": unknown key or table '" + key + "' (expected [base], [sweep], [[runs]])");
    }
  }
  if (sweep.empty() && explicit_runs.empty())
    throw std::invalid_argument(path + ": no runs: add a [sweep] table or [[runs]] entries");

  auto add_run = [&](KV kv, const std::vector<std::pair<std::string, std::string>>& id_parts) {
    GridRun r;
    r.id = make_id(id_parts);
    for (const auto& [k, v] : id_parts) {
      // numbers stay numbers in grid.json
      char* end = nullptr;
      const double d = std::strtod(v.c_str(), &end);
      if (!v.empty() && end && *end == '\0' && std::isfinite(d)) r.swept[k] = d == std::floor(d) && std::abs(d) < 1e15 ? nlohmann::json(static_cast<long long>(d)) : nlohmann::json(d);
      else r.swept[k] = v;
    }
    if (!has_key(kv, "save-interval")) kv.emplace_back("save-interval", "50");
    r.cfg = train_config_from_keys(kv, path + ", run " + r.id);
    r.cfg.out = (fs::path(out_dir) / r.id).string();
    r.cfg.quiet = true;
    for (const GridRun& o : g.runs)
      if (o.id == r.id) throw std::invalid_argument(path + ": two runs have the id '" + r.id + "'");
    g.runs.push_back(std::move(r));
  };

  if (!sweep.empty()) {
    std::vector<std::string> names;
    for (auto& s : sweep) names.push_back(s.first);
    const std::vector<std::string> order = ordered_keys(names);
    std::vector<const std::vector<std::string>*> lists;
    for (const std::string& n : order)
      for (auto& s : sweep) if (s.first == n) lists.push_back(&s.second);
    std::vector<size_t> idx(order.size(), 0);
    while (true) {
      KV kv = base;
      std::vector<std::pair<std::string, std::string>> parts;
      for (size_t i = 0; i < order.size(); ++i) {
        kv.emplace_back(order[i], (*lists[i])[idx[i]]);
        parts.emplace_back(order[i], (*lists[i])[idx[i]]);
      }
      add_run(kv, parts);
      // odometer, last key (the seed) fastest
      int i = static_cast<int>(order.size()) - 1;
      while (i >= 0 && ++idx[i] == lists[i]->size()) idx[i--] = 0;
      if (i < 0) break;
    }
  }
  for (const KV& entry : explicit_runs) {
    KV kv = base;
    kv.insert(kv.end(), entry.begin(), entry.end());
    std::vector<std::string> names;
    for (const auto& p : entry) names.push_back(p.first);
    std::vector<std::pair<std::string, std::string>> parts;
    for (const std::string& n : ordered_keys(names))
      for (const auto& p : entry) if (p.first == n) parts.push_back(p);
    add_run(kv, parts);
  }
  return g;
}

namespace {

int world_rank() { int r = 0; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
int world_size() { int s = 1; MPI_Comm_size(MPI_COMM_WORLD, &s); return s; }

std::string run_status_on_disk(const GridRun& r) {
  const std::string path = r.cfg.out + "/metrics.h5";
  if (!fs::exists(path)) return "pending";
  try {
    MetricsFile f = MetricsFile::load(path);
    auto it = f.attrs().find("status");
    if (it != f.attrs().end() && std::holds_alternative<std::string>(it->second))
      return std::get<std::string>(it->second);
  } catch (const std::exception&) {
  }
  return "running";  // unreadable or unmarked: an interrupted run
}

bool finished(const std::string& status) { return status == "completed" || status == "diverged"; }

std::string format_duration(double s) {
  char buf[32];
  if (s < 10) { std::snprintf(buf, sizeof buf, "%.1fs", s); return buf; }
  long t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

// This machine's fp32 GEMM rate over all its cores (FLOP/s): a few matmuls of a transformer
// block's shape, about 0.2 s. The grid's time estimate divides the runs' FLOPs by it.
double measure_gemm_rate(int threads) {
  const int N = 512, C = 768, OC = 768;
  std::vector<float> x(static_cast<size_t>(N) * C, 0.01f), w(static_cast<size_t>(OC) * C, 0.01f),
      y(static_cast<size_t>(N) * OC);
  cpu::set_num_threads(threads);
  cpu::matmul_forward(y.data(), x.data(), w.data(), nullptr, N, C, OC);  // warm-up
  const auto t0 = std::chrono::steady_clock::now();
  int calls = 0;
  double s = 0;
  do {
    cpu::matmul_forward(y.data(), x.data(), w.data(), nullptr, N, C, OC);
    ++calls;
    s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (s < 0.2);
  return 2.0 * N * C * OC * calls / s;
}

// A run's training FLOPs: 6 N + 12 L T d per token trained (Megatron's count), plus forward
// passes (a third of that) for its evaluations.
double run_flops(const TrainConfig& c) {
  const double per_token = c.model.flops_per_token();
  const double batch = c.global_batch_size > 0 ? c.global_batch_size : static_cast<double>(c.micro_batch_size) * c.dp;
  const double tokens = batch * c.model.seq_length;
  const double evals = c.eval_interval > 0 ? std::floor(static_cast<double>(c.train_iters) / c.eval_interval) : 0;
  return per_token * tokens * (c.train_iters + evals * c.eval_iters / 3.0);
}

// `lossytp grid FILE --out DIR --dry-run`: the runs, their layout and status, and a time estimate.
void print_dry_run(const Grid& grid, const GridOptions& opt, int world) {
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  // A whole training step of the small models runs at about this GEMM rate on the CPU (gpt-tiny:
  // 28.8 MFLOP a token at 2,800 tokens/s on 2 loaded cores = 81 GFLOP/s against 94 measured here).
  constexpr double kEfficiency = 1.0;
  const double rate = measure_gemm_rate(cores) * kEfficiency;
  int most_ranks = 1;
  double total_s = 0, todo_s = 0;
  size_t todo = 0;
  std::printf("lossytp grid --dry-run: %zu runs in %s (nothing is trained or written)\n", grid.runs.size(),
              opt.file.c_str());
  std::printf("%-4s %-44s %-16s %5s %-12s %7s %-10s %9s\n", "#", "run", "layout tp.cp.dp.pp", "ranks", "model",
              "iters", "status", "estimate");
  for (size_t i = 0; i < grid.runs.size(); ++i) {
    const GridRun& r = grid.runs[i];
    const TrainConfig& c = r.cfg;
    most_ranks = std::max(most_ranks, r.ranks());
    const std::string st = run_status_on_disk(r);
    double s = run_flops(c) / rate;
    if (c.compute().device != Device::CPU) s = NAN;  // the estimate is for CPU runs
    char layout[48];
    std::snprintf(layout, sizeof layout, "%d.%d.%d.%d", c.tp, c.cp, c.dp, c.pp);
    std::printf("%-4zu %-44s %-16s %5d %-12s %7d %-10s %9s\n", i + 1, r.id.c_str(), layout, r.ranks(),
                c.model_preset.c_str(), c.train_iters, st.c_str(), std::isnan(s) ? "-" : format_duration(s).c_str());
    if (!std::isnan(s)) {
      total_s += s;
      if (!finished(st)) {
        todo_s += s;
        ++todo;
      }
    }
  }
  const int job = opt.virtual_ranks > 0 ? opt.virtual_ranks : world;
  std::printf("estimate: %s for all runs, %s for the %zu not finished, on this machine's %d cores "
              "(fp32 GEMM rate %.1f GFLOP/s measured now, x%.1f for a whole step; rough: +-50 %%, more when busy)\n",
              format_duration(total_s).c_str(), format_duration(todo_s).c_str(), todo, cores,
              rate / kEfficiency / 1e9, kEfficiency);
  if (most_ranks > job)
    std::printf("launch with at least %d ranks: mpirun -np %d lossytp grid %s --out %s (or --virtual-ranks %d)\n",
                most_ranks, most_ranks, opt.file.c_str(), opt.out.c_str(), most_ranks);
  std::fflush(stdout);
}

void write_manifest(const Grid& g, const std::string& out, const std::vector<nlohmann::json>& state) {
  nlohmann::json j;
  j["version"] = LOSSYTP_VERSION;
  j["grid_file"] = fs::absolute(g.file).string();
  j["grid_hash"] = g.file_hash;
  j["world_size"] = world_size();
  j["runs"] = nlohmann::json::array();
  for (size_t i = 0; i < g.runs.size(); ++i) {
    nlohmann::json r = state[i];
    r["id"] = g.runs[i].id;
    r["swept"] = g.runs[i].swept;
    r["ranks"] = g.runs[i].ranks();
    j["runs"].push_back(r);
  }
  const fs::path tmp = fs::path(out) / "grid.json.tmp";
  {
    std::ofstream f(tmp);
    f << j.dump(1) << "\n";
  }
  fs::rename(tmp, fs::path(out) / "grid.json");
}

}  // namespace

int run_grid(const GridOptions& opt) {
  const int me = world_rank(), W = world_size();
  Grid grid;
  std::string error;
  std::map<std::string, TokenCorpus> corpora;  // by data options
  auto data_key = [](const TrainConfig& c) {
    return c.data.path + "|" + c.data.eval_path + "|" + c.data.format + "|" + std::to_string(c.data.eval_fraction) +
           "|" + std::to_string(c.data.vocab_size) + "|" + std::to_string(c.data.seed) + "|" + c.data.loss_mask +
           "|" + c.data.eval_loss_mask;
  };
  // Ranks of this job on this node (collective: every rank, before anything can fail).
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local_ranks = 1;
  MPI_Comm_size(node, &local_ranks);
  MPI_Comm_free(&node);
  if (opt.virtual_ranks > 0) local_ranks = opt.virtual_ranks;
  try {
    if (opt.out.empty()) throw std::invalid_argument("--out DIR is required");
    if (opt.virtual_ranks < 0) throw std::invalid_argument("--virtual-ranks must be >= 0");
    if (opt.virtual_ranks > 0 && W > 1)
      throw std::invalid_argument("--virtual-ranks runs the grid in one process: launch it without mpirun (or with -np 1)");
    grid = load_grid(opt.file, opt.out);
    for (GridRun& r : grid.runs) {
      const int avail = opt.virtual_ranks > 0 ? opt.virtual_ranks : W;
      if (r.ranks() > avail && !opt.dry_run)  // a dry run says how to launch instead
        throw std::invalid_argument("run '" + r.id + "' needs tp x dp" + (r.cfg.cp > 1 ? " x cp" : "") +
                                    (r.cfg.pp > 1 ? " x pp" : "") + " = " + std::to_string(r.ranks()) +
                                    " ranks but the job has " + std::to_string(avail) +
                                    (opt.virtual_ranks > 0 ? " (--virtual-ranks)" : " (launch with mpirun -np N, or add --virtual-ranks N)"));
      const std::string key = data_key(r.cfg);
      if (!corpora.count(key)) corpora.emplace(key, load_corpus(r.cfg.data));
      try {
        reconcile_data(r.cfg, corpora.at(key));
        // Runs fill every rank of the node side by side: the largest must fit on all of them.
        const double need = plan_run(r.cfg)["memory_bytes_per_rank"].get<double>();
        const std::string why =
            check_memory(need, local_ranks, ops::available_memory(r.cfg.compute().device), r.cfg.compute().device);
        if (!why.empty()) throw std::invalid_argument(why);
      } catch (const std::exception& e) {
        throw std::invalid_argument(opt.file + ", run " + r.id + ": " + e.what());
      }
    }
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (!all_ranks_ok(error)) return 2;
  if (opt.dry_run) {
    if (me == 0) print_dry_run(grid, opt, W);
    return 0;
  }

  // The results folder: new, or one this grid (or --force) made before.
  if (me == 0) {
    std::error_code ec;
    const fs::path out(opt.out), manifest = out / "grid.json";
    if (fs::exists(out, ec) && !fs::is_directory(out, ec)) {
      error = "--out '" + opt.out + "' exists and is not a directory";
    } else if (fs::exists(manifest, ec)) {
      try {
        std::ifstream f(manifest);
        nlohmann::json j = nlohmann::json::parse(f);
        if (j.value("grid_hash", "") != grid.file_hash && !opt.force)
          error = "'" + opt.out + "' holds results of a different grid file (" + j.value("grid_file", "?") +
                  "); the grid changed since. Use --force to run the changed grid there (finished runs whose "
                  "configuration is unchanged are kept), or choose another --out";
      } catch (const std::exception& e) {
        error = "cannot read '" + manifest.string() + "': " + e.what();
      }
    } else if (fs::exists(out, ec) && !fs::is_empty(out, ec)) {
      error = "--out '" + opt.out + "' is not empty and holds no grid.json; choose a new folder";
    }
    if (error.empty()) {
      fs::create_directories(out, ec);
      if (ec) error = "cannot create '" + opt.out + "': " + ec.message();
    }
  }
  if (!all_ranks_ok(error)) return 2;

  // What is left to do (rank 0 decides; everyone follows).
  const size_t n = grid.runs.size();
  std::vector<int> todo(n, 1);
  std::vector<nlohmann::json> state(n);
  if (me == 0) {
    for (size_t i = 0; i < n; ++i) {
      const std::string st = run_status_on_disk(grid.runs[i]);
      state[i]["status"] = st;
      if (finished(st)) {
        bool same = true;
        if (opt.force) {  // a changed grid may have changed this run's configuration
          try {
            MetricsFile f = MetricsFile::load(grid.runs[i].cfg.out + "/metrics.h5");
            auto j = nlohmann::json::parse(std::get<std::string>(f.attrs().at("config")));
            auto want = grid.runs[i].cfg.to_json();
            // neither changes what a run computes
            for (const char* k : {"out", "threads", "keep-checkpoints"}) { j.erase(k); want.erase(k); }
            // runs from before --device/--bf16 existed ran on the CPU in fp32
            if (!j.contains("device")) j["device"] = "cpu";
            if (!j.contains("bf16")) j["bf16"] = false;
            same = j == want;
          } catch (const std::exception&) {
            same = false;
          }
        }
        todo[i] = same ? 0 : 1;
      }
    }
    write_manifest(grid, opt.out, state);
  }
  MPI_Bcast(todo.data(), static_cast<int>(n), MPI_INT, 0, MPI_COMM_WORLD);
  const size_t total_todo = static_cast<size_t>(std::count(todo.begin(), todo.end(), 1));
  if (me == 0) {
    std::printf("lossytp grid: %zu runs in %s, %zu to do (%zu finished before), %d %s\n", n,
                opt.file.c_str(), total_todo, n - total_todo,
                opt.virtual_ranks > 0 ? opt.virtual_ranks : W, opt.virtual_ranks > 0 ? "virtual ranks" : "ranks");
    std::fflush(stdout);
  }

  // Threads per rank unless the grid sets them: the node's cores shared by its ranks.
  const int default_threads =
      std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / std::max(1, local_ranks));

  const auto t0 = std::chrono::steady_clock::now();
  size_t done_now = 0;
  int failures = 0;
  // A stop signal interrupts the running runs (each writes a checkpoint) and starts no more.
  install_stop_signals();
  int stopped = 0;  // the signal, once every rank knows

  // What a run trains with: its config plus progress lines and, when it has one, its checkpoint.
  auto run_config = [&](const GridRun& r, bool has_checkpoint) {
    TrainConfig cfg = r.cfg;
    // Progress of long runs: a line every log interval with --verbose, else about five per run.
    cfg.quiet = false;
    cfg.progress_prefix = "  [" + r.id + "] ";
    if (!opt.verbose) {
      const int fifth = (cfg.train_iters + 4) / 5;
      cfg.progress_interval = (fifth + cfg.log_interval - 1) / cfg.log_interval * cfg.log_interval;
    }
    if (cfg.threads == 0) cfg.threads = default_threads;
    if (has_checkpoint) cfg.load = cfg.out;
    return cfg;
  };
  // Trains one run on its ranks; the report of rank 0 of the run (what grid.json records).
  auto train_run = [&](size_t idx, const TrainConfig& cfg, auto&& train_call) {
    nlohmann::json report;
    report["index"] = idx;
    const auto rt0 = std::chrono::steady_clock::now();
    try {
      TrainResult res = train_call(cfg);
      report["status"] = res.status;
      if (!res.train_loss.empty()) report["final_train_loss"] = res.train_loss.back();
      if (!res.eval_loss.empty()) report["final_eval_loss"] = res.eval_loss.back();
      report["tokens_per_second"] = res.tokens_per_second;
      report["observed_loss_rate"] = res.observed_loss_rate;
      if (res.start_iteration > 0) report["resumed_from"] = res.start_iteration;
    } catch (const std::exception& e) {
      report["status"] = "failed";
      report["error"] = e.what();
    }
    report["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - rt0).count();
    return report;
  };
  // Rank 0: records a finished run and prints its line.
  auto record = [&](nlohmann::json rep) {
    const size_t idx = rep["index"];
    rep.erase("index");
    state[idx] = rep;
    ++done_now;
    if (rep["status"] == "failed") ++failures;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double eta = elapsed / done_now * (total_todo - done_now);
    std::string detail;
    char buf[160];
    if (rep.contains("final_train_loss") && rep["final_train_loss"].is_number()) {
      std::snprintf(buf, sizeof buf, ", train loss %.4f", rep["final_train_loss"].get<double>());
      detail += buf;
    }
    if (rep.contains("final_eval_loss") && rep["final_eval_loss"].is_number()) {
      std::snprintf(buf, sizeof buf, ", eval loss %.4f", rep["final_eval_loss"].get<double>());
      detail += buf;
    }
    if (rep.contains("resumed_from"))
      detail += ", resumed from iteration " + std::to_string(rep["resumed_from"].get<long long>());
    if (rep.contains("error")) detail += ": " + rep["error"].get<std::string>();
    std::printf("[%zu/%zu] %s: %s%s (%s) | ETA %s\n", done_now, total_todo, grid.runs[idx].id.c_str(),
                rep["status"].get<std::string>().c_str(), detail.c_str(),
                format_duration(rep.value("seconds", 0.0)).c_str(), format_duration(eta).c_str());
  };

  // Rank 0: the runs of a round are `running` in grid.json while they train, so a job that dies
  // meanwhile (kill -9 of a rank, which makes mpirun abort the job; a lost node) leaves grid.json
  // naming the runs it was training. The next invocation resumes them like any unfinished run.
  auto mark_running = [&](const std::vector<size_t>& runs, size_t first, size_t count) {
    for (size_t k = first; k < std::min(runs.size(), first + count); ++k)
      state[runs[k]] = nlohmann::json{{"status", "running"}};
    write_manifest(grid, opt.out, state);
  };

  // Size classes in order of first appearance: groups of S ranks, round after round.
  std::vector<int> sizes;
  for (size_t i = 0; i < n; ++i)
    if (todo[i] && std::find(sizes.begin(), sizes.end(), grid.runs[i].ranks()) == sizes.end())
      sizes.push_back(grid.runs[i].ranks());
  const int ranks_available = opt.virtual_ranks > 0 ? opt.virtual_ranks : W;
  for (int S : sizes) {
    std::vector<size_t> runs;
    for (size_t i = 0; i < n; ++i) if (todo[i] && grid.runs[i].ranks() == S) runs.push_back(i);
    const int G = ranks_available / S;
    if (me == 0 && G > 1) {
      std::printf("%zu runs of %d ranks: %d side by side\n", runs.size(), S, G);
      std::fflush(stdout);
    }
    if (opt.virtual_ranks > 0) {
      // One process: each run of the round is a LocalWorld of S threads.
      for (size_t round = 0; round * G < runs.size(); ++round) {
        const size_t first = round * G, count = std::min<size_t>(G, runs.size() - first);
        mark_running(runs, first, count);
        std::vector<nlohmann::json> reports(count);
        std::vector<std::thread> threads;
        std::vector<std::unique_ptr<LocalWorld>> worlds;
        worlds.reserve(count);  // threads index it while later worlds are added
        for (size_t g = 0; g < count; ++g) {
          const size_t idx = runs[first + g];
          const TrainConfig cfg = run_config(grid.runs[idx], latest_checkpoint(grid.runs[idx].cfg.out) >= 0);
          worlds.push_back(std::make_unique<LocalWorld>(S, cfg.compute().device));
          for (int rank = 0; rank < S; ++rank)
            threads.emplace_back([&, g, idx, cfg, rank] {
              LocalWorld& world = *worlds[g];
              TrainConfig mine = cfg;
              if (rank != 0) mine.quiet = true;
              nlohmann::json rep = train_run(idx, mine, [&](const TrainConfig& c) {
                return train(c, corpora.at(data_key(c)), world, rank);
              });
              if (rank == 0) reports[g] = rep;  // the leader speaks for the run
            });
        }
        for (auto& t : threads) t.join();
        for (auto& rep : reports) record(rep);
        std::fflush(stdout);
        write_manifest(grid, opt.out, state);
        if ((stopped = stop_signal()) != 0) break;
      }
      if (stopped) break;
      continue;
    }
    const int color = me < G * S ? me / S : MPI_UNDEFINED;
    MPI_Comm group = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, color, me, &group);
    for (size_t round = 0; round * G < runs.size(); ++round) {
      if (me == 0) mark_running(runs, round * G, G);
      nlohmann::json report;  // this rank's news for rank 0 (group leaders only)
      if (group != MPI_COMM_NULL && round * G + color < runs.size()) {
        const size_t idx = runs[round * G + color];
        int grank = 0;
        MPI_Comm_rank(group, &grank);
        int64_t ck = grank == 0 ? latest_checkpoint(grid.runs[idx].cfg.out) : -1;
        MPI_Bcast(&ck, 1, MPI_INT64_T, 0, group);
        const TrainConfig cfg = run_config(grid.runs[idx], ck >= 0);
        // A communicator of its own: a failed run may leave operations pending on it (it is
        // then left alone rather than freed).
        MPI_Comm run_comm;
        MPI_Comm_dup(group, &run_comm);
        report = train_run(idx, cfg, [&](const TrainConfig& c) {
          return train(c, corpora.at(data_key(c)), run_comm);
        });
        if (report["status"] != "failed") MPI_Comm_free(&run_comm);
        if (grank != 0) report = nlohmann::json();  // the leader speaks for the run
      }
      // Rank 0 collects every leader's report.
      std::string mine = report.is_null() ? "" : report.dump();
      int len = static_cast<int>(mine.size());
      std::vector<int> lens(me == 0 ? W : 0), offs(me == 0 ? W : 0);
      MPI_Gather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
      std::string all;
      if (me == 0) {
        int total = 0;
        for (int i = 0; i < W; ++i) { offs[i] = total; total += lens[i]; }
        all.resize(total);
      }
      MPI_Gatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(), offs.data(), MPI_CHAR, 0, MPI_COMM_WORLD);
      if (me == 0) {
        for (int i = 0; i < W; ++i)
          if (lens[i] > 0) record(nlohmann::json::parse(all.substr(offs[i], lens[i])));
        std::fflush(stdout);
        write_manifest(grid, opt.out, state);
      }
      stopped = stop_signal();  // a signal to any rank stops the grid after this round
      MPI_Allreduce(MPI_IN_PLACE, &stopped, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
      if (stopped) break;
    }
    // The group itself saw only splits, dups and broadcasts, in step, so it can be freed.
    if (group != MPI_COMM_NULL) MPI_Comm_free(&group);
    if (stopped) break;
  }
  MPI_Bcast(&failures, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (me == 0) {
    std::map<std::string, int> count;
    for (const auto& s : state) count[s.value("status", std::string("pending"))]++;
    std::string summary;
    for (const auto& [k, v] : count) summary += (summary.empty() ? "" : ", ") + std::to_string(v) + " " + k;
    if (stopped)
      std::printf("grid interrupted by %s: %s. Interrupted runs have a checkpoint: run the same command "
                  "again to resume them and the pending ones\n", signal_name(stopped).c_str(), summary.c_str());
    else
      std::printf("grid finished: %s. Results in %s; next: lossytp summarize %s\n", summary.c_str(),
                  opt.out.c_str(), opt.out.c_str());
    std::fflush(stdout);
  }
  if (stopped) return kExitInterrupted;
  return failures > 0 ? 1 : 0;
}

}  // namespace lossytp
