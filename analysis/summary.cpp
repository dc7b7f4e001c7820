// Summary of a folder of runs: reading metrics.h5 files, pairing each run with its exact twin,
// aggregating seeds with Student-t confidence intervals, and writing RFC 4180 CSV.
#include "analysis/summary.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "experiments/metrics_file.h"

namespace lossytp::analysis {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Columns every summary has; a swept parameter of the same name is not repeated.
const std::set<std::string> kFixedParams = {"net", "seed", "tp", "dp"};

// Grid/flag names -> the name of the summary column.
std::string normalize_param(const std::string& key) {
  if (key == "tensor-model-parallel-size") return "tp";
  if (key == "data-parallel-size") return "dp";
  return key;
}

// The config key that holds a (normalized) parameter.
std::string config_key(const std::string& param) {
  if (param == "tp") return "tensor-model-parallel-size";
  if (param == "dp") return "data-parallel-size";
  return param;
}

bool is_net_only_key(const std::string& key) {
  return key == "net" || key.rfind("net-", 0) == 0 || key.rfind("net_", 0) == 0;
}

// Config keys that change where and how a run is carried out, not what it computes: twins may
// differ in them.
const std::set<std::string> kOperationalKeys = {"out",           "threads",      "log-interval",
                                                "save-interval", "comm-timeout", "load",
                                                "keep-checkpoints"};

std::optional<double> attr_number(const MetricsFile& m, const std::string& name) {
  auto it = m.attrs().find(name);
  if (it == m.attrs().end()) return std::nullopt;
  if (auto d = std::get_if<double>(&it->second)) return *d;
  if (auto i = std::get_if<int64_t>(&it->second)) return static_cast<double>(*i);
  if (auto s = std::get_if<std::string>(&it->second)) {  // tolerate a number stored as text
    try {
      size_t used = 0;
      double v = std::stod(*s, &used);
      if (used == s->size()) return v;
    } catch (...) {
    }
  }
  return std::nullopt;
}

std::string attr_string(const MetricsFile& m, const std::string& name) {
  auto it = m.attrs().find(name);
  if (it == m.attrs().end()) return "";
  if (auto s = std::get_if<std::string>(&it->second)) return *s;
  if (auto d = std::get_if<double>(&it->second)) return format_number(*d);
  return std::to_string(std::get<int64_t>(it->second));
}

std::optional<int64_t> json_int(const json& v) {
  if (v.is_number_integer() || v.is_number_unsigned()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d)) return static_cast<int64_t>(d);
  }
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    int64_t out = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (ec == std::errc() && p == s.data() + s.size()) return out;
  }
  return std::nullopt;
}

// A series as doubles (float or int64 dataset), or null when absent.
std::optional<std::vector<double>> series_values(const MetricsFile& m, const std::string& name) {
  if (const auto* f = m.series(name)) return *f;
  if (const auto* i = m.int_series(name)) return std::vector<double>(i->begin(), i->end());
  return std::nullopt;
}

struct GridEntry {
  std::string status;
  json swept = json::object();
};

struct GridInfo {
  bool present = false;
  std::vector<std::string> order;  // ids in grid.json order
  std::map<std::string, GridEntry> runs;
  std::vector<std::string> swept_keys;  // normalized, in first-appearance order
};

GridInfo read_grid(const fs::path& dir) {
  GridInfo g;
  const fs::path path = dir / "grid.json";
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return g;
  std::ifstream in(path);
  if (!in) throw AnalysisError("cannot read '" + path.string() + "'");
  json j;
  try {
    j = json::parse(in);
  } catch (const std::exception& e) {
    throw AnalysisError("'" + path.string() + "' is not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("runs") || !j["runs"].is_array())
    throw AnalysisError("'" + path.string() + "' has no \"runs\" list");
  g.present = true;
  for (const auto& r : j["runs"]) {
    if (!r.is_object() || !r.contains("id")) continue;
    const std::string id = r["id"].is_string() ? r["id"].get<std::string>() : r["id"].dump();
    GridEntry e;
    if (r.contains("status") && r["status"].is_string()) e.status = r["status"].get<std::string>();
    if (r.contains("swept") && r["swept"].is_object())
      for (const auto& [k, v] : r["swept"].items()) {
        const std::string key = normalize_param(k);
        e.swept[key] = v;
        if (std::find(g.swept_keys.begin(), g.swept_keys.end(), key) == g.swept_keys.end())
          g.swept_keys.push_back(key);
      }
    if (!g.runs.count(id)) g.order.push_back(id);
    g.runs[id] = std::move(e);
  }
  return g;
}

RunRecord load_run(const std::string& id, const fs::path& folder) {
  RunRecord r;
  r.id = id;
  r.path = folder.string();
  const std::string file = (folder / "metrics.h5").string();
  MetricsFile m("");
  try {
    m = MetricsFile::load(file);
  } catch (const std::exception& e) {
    throw AnalysisError(e.what());
  }
  const std::string cfg = attr_string(m, "config");
  if (!cfg.empty()) {
    try {
      r.config = json::parse(cfg);
    } catch (const std::exception& e) {
      throw AnalysisError("metrics file " + file + ": attribute 'config' is not valid JSON: " +
                          e.what());
    }
    if (!r.config.is_object())
      throw AnalysisError("metrics file " + file + ": attribute 'config' is not a JSON object");
  }
  r.net = attr_string(m, "net");
  if (r.net.empty() && r.config.contains("net") && r.config["net"].is_string())
    r.net = r.config["net"].get<std::string>();
  r.status = attr_string(m, "status");
  if (r.config.contains("seed")) r.seed = json_int(r.config["seed"]);
  if (r.config.contains("tensor-model-parallel-size"))
    r.tp = json_int(r.config["tensor-model-parallel-size"]);
  if (r.config.contains("data-parallel-size")) r.dp = json_int(r.config["data-parallel-size"]);

  const auto loss = series_values(m, "train/loss");
  r.iterations = loss ? static_cast<int64_t>(loss->size()) : 0;
  if (loss && !loss->empty()) {
    const size_t k = std::min<size_t>(10, loss->size());
    double sum = 0;
    for (size_t i = loss->size() - k; i < loss->size(); ++i) sum += (*loss)[i];
    r.final_train_loss = sum / static_cast<double>(k);
  }
  if (const auto ev = series_values(m, "eval/loss"); ev && !ev->empty()) {
    r.final_eval_loss = ev->back();
    for (double x : *ev)
      if (std::isfinite(x) && (!r.best_eval_loss || x < *r.best_eval_loss)) r.best_eval_loss = x;
  }
  if (const auto a = series_values(m, "eval/accuracy"); a && !a->empty()) r.final_accuracy = a->back();
  if (const auto a = series_values(m, "eval/accuracy_norm"); a && !a->empty()) r.final_accuracy_norm = a->back();
  if (const auto d = series_values(m, "divergence/replica_divergence"); d && !d->empty())
    r.final_replica_divergence = d->back();
  if (const auto sc = series_values(m, "train/sim_comm_s")) {
    double sum = 0;
    for (double x : *sc) sum += x;
    r.sim_comm_seconds = sum;
  }
  {
    double tp = 0, dp = 0;
    size_t rows = 0;
    for (const std::string& name : m.series_names()) {
      const std::string pre = "comm/", post = "/bytes";
      if (name.rfind(pre, 0) != 0 || name.size() <= pre.size() + post.size() ||
          name.compare(name.size() - post.size(), post.size(), post) != 0)
        continue;
      const std::string site = name.substr(pre.size(), name.size() - pre.size() - post.size());
      const auto v = series_values(m, name);
      if (!v || v->empty()) continue;
      double sum = 0;
      for (double x : *v) sum += x;
      rows = std::max(rows, v->size());
      if (site.rfind("dp.", 0) == 0) dp += sum;
      else if (site.rfind("pp.", 0) != 0) tp += sum;
    }
    if (const auto it = series_values(m, "comm/iteration"); it && !it->empty()) rows = it->size();
    if (rows > 0) {
      r.tp_bytes_per_iteration = tp / static_cast<double>(rows);
      r.dp_bytes_per_iteration = dp / static_cast<double>(rows);
    }
  }
  r.observed_loss_rate = attr_number(m, "observed_loss_rate");
  r.net_stationary_loss_rate = attr_number(m, "net_stationary_loss_rate");
  r.tokens_per_second = attr_number(m, "tokens_per_second");
  r.data_entropy_floor = attr_number(m, "data_entropy_floor");
  return r;
}

std::string opt_cell(const std::optional<double>& v) { return v ? format_number(*v) : ""; }
std::string opt_cell(const std::optional<int64_t>& v) { return v ? std::to_string(*v) : ""; }

void append_row(std::string& out, const std::vector<std::string>& cells) {
  for (size_t i = 0; i < cells.size(); ++i) {
    if (i) out += ',';
    out += csv_field(cells[i]);
  }
  out += '\n';
}

// Regularized incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes).
double beta_cf(double a, double b, double x) {
  const double tiny = 1e-300, eps = 1e-16;
  double qab = a + b, qap = a + 1, qam = a - 1;
  double c = 1, d = 1 - qab * x / qap;
  if (std::fabs(d) < tiny) d = tiny;
  d = 1 / d;
  double h = d;
  for (int m = 1; m <= 10000; ++m) {
    const int m2 = 2 * m;
    double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
    d = 1 + aa * d;
    if (std::fabs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    h *= d * c;
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
    d = 1 + aa * d;
    if (std::fabs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1) < eps) break;
  }
  return h;
}

double incomplete_beta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const double front =
      std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) +
               b * std::log1p(-x));
  if (x < (a + 1) / (a + b + 2)) return front * beta_cf(a, b, x) / a;
  return 1 - front * beta_cf(b, a, 1 - x) / b;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Formatting

std::string format_number(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, p);
}

std::string format_json_value(const json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number_unsigned()) return std::to_string(v.get<uint64_t>());
  if (v.is_number_float()) {
    // The config stores some values as float32 widened to double (lr 0.0010000000474974513):
    // print those as the float they were (0.001).
    const double d = v.get<double>();
    const float f = static_cast<float>(d);
    if (std::isfinite(d) && static_cast<double>(f) == d) {
      char buf[64];
      auto [p, ec] = std::to_chars(buf, buf + sizeof buf, f);
      return std::string(buf, p);
    }
    return format_number(d);
  }
  return v.dump();
}

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

// ---------------------------------------------------------------------------------------------
// Statistics

double student_t_cdf(double t, double dof) {
  if (std::isnan(t) || !(dof > 0)) return std::numeric_limits<double>::quiet_NaN();
  if (std::isinf(t)) return t > 0 ? 1.0 : 0.0;
  const double x = dof / (dof + t * t);
  const double tail = 0.5 * incomplete_beta(dof / 2, 0.5, x);  // P(T > |t|)
  return t > 0 ? 1 - tail : tail;
}

double student_t_quantile(double p, double dof) {
  if (!(p > 0 && p < 1) || !(dof > 0)) return std::numeric_limits<double>::quiet_NaN();
  if (p == 0.5) return 0;
  if (p < 0.5) return -student_t_quantile(1 - p, dof);
  double lo = 0, hi = 1;
  while (student_t_cdf(hi, dof) < p && hi < 1e300) hi *= 2;
  for (int i = 0; i < 2000 && hi - lo > 1e-15 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (student_t_cdf(mid, dof) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

Stat describe_sample(const std::vector<double>& xs) {
  Stat s;
  s.n = xs.size();
  if (s.n == 0) return s;
  double sum = 0;
  for (double x : xs) sum += x;
  const double mean = sum / static_cast<double>(s.n);
  s.mean = mean;
  if (s.n < 2) return s;
  double ss = 0;
  for (double x : xs) ss += (x - mean) * (x - mean);
  const double sd = std::sqrt(ss / static_cast<double>(s.n - 1));
  s.std = sd;
  const double half =
      student_t_quantile(0.975, static_cast<double>(s.n - 1)) * sd / std::sqrt(double(s.n));
  s.ci_low = mean - half;
  s.ci_high = mean + half;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Runs

std::vector<std::pair<std::string, std::string>> find_run_dirs(const std::string& dir) {
  std::error_code ec;
  const fs::path root(dir);
  if (!fs::exists(root, ec)) throw AnalysisError("'" + dir + "' does not exist");
  if (!fs::is_directory(root, ec)) throw AnalysisError("'" + dir + "' is not a directory");
  std::vector<std::pair<std::string, std::string>> out;
  auto has_metrics = [](const fs::path& p) {
    std::error_code e;
    return fs::exists(p / "metrics.h5", e);
  };
  if (has_metrics(root)) {
    std::string id = fs::absolute(root, ec).lexically_normal().filename().string();
    if (id.empty()) id = fs::absolute(root, ec).lexically_normal().parent_path().filename().string();
    if (id.empty()) id = ".";
    out.emplace_back(id, root.string());
  }
  fs::directory_iterator it(root, ec), end;
  if (ec) throw AnalysisError("cannot read directory '" + dir + "': " + ec.message());
  std::vector<std::pair<std::string, std::string>> subs;
  for (; it != end; it.increment(ec)) {
    if (ec) throw AnalysisError("cannot read directory '" + dir + "': " + ec.message());
    const std::string name = it->path().filename().string();
    std::error_code e2;
    if (name.empty() || name[0] == '.' || !it->is_directory(e2)) continue;
    if (has_metrics(it->path())) subs.emplace_back(name, (root / name).string());
  }
  if (ec) throw AnalysisError("cannot read directory '" + dir + "': " + ec.message());
  std::sort(subs.begin(), subs.end());
  out.insert(out.end(), subs.begin(), subs.end());
  if (out.empty())
    throw AnalysisError("no runs in '" + dir +
                        "': neither it nor any of its subfolders holds a metrics.h5");
  return out;
}

bool is_exact_spec(const std::string& net) {
  if (net.empty()) return false;
  size_t start = 0;
  while (true) {
    const size_t plus = net.find('+', start);
    const std::string model = net.substr(start, plus == std::string::npos ? plus : plus - start);
    if (model.substr(0, model.find(':')) != "exact") return false;
    if (plus == std::string::npos) return true;
    start = plus + 1;
  }
}

std::string model_family(const std::string& net) {
  std::vector<std::string> names;
  size_t start = 0;
  while (start <= net.size()) {
    const size_t plus = net.find('+', start);
    const std::string model = net.substr(start, plus == std::string::npos ? plus : plus - start);
    const std::string name = model.substr(0, model.find(':'));
    if (!name.empty() && std::find(names.begin(), names.end(), name) == names.end())
      names.push_back(name);
    if (plus == std::string::npos) break;
    start = plus + 1;
  }
  if (names.size() > 1) names.erase(std::remove(names.begin(), names.end(), "exact"), names.end());
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : "+") + n;
  return out;
}

std::string twin_key(const json& config) {
  json c = config.is_object() ? config : json::object();
  for (auto it = c.begin(); it != c.end();) {
    if (is_net_only_key(it.key()) || kOperationalKeys.count(it.key()))
      it = c.erase(it);
    else
      ++it;
  }
  return c.dump();  // keys are sorted: equal configs give equal text
}

void compute_gaps(std::vector<RunRecord>& runs) {
  // Exact runs by twin key, best first: completed before others, then by id.
  std::map<std::string, std::vector<const RunRecord*>> exact;
  for (const auto& r : runs)
    if (is_exact_spec(r.net) && r.final_eval_loss && !r.path.empty())
      exact[twin_key(r.config)].push_back(&r);
  for (auto& [k, v] : exact)
    std::stable_sort(v.begin(), v.end(), [](const RunRecord* a, const RunRecord* b) {
      const bool ca = a->status == "completed", cb = b->status == "completed";
      if (ca != cb) return ca;
      return a->id < b->id;
    });
  for (auto& r : runs) {
    r.eval_loss_gap.reset();
    r.twin.clear();
    if (!r.final_eval_loss || r.path.empty()) continue;
    if (is_exact_spec(r.net)) {
      r.eval_loss_gap = 0.0;
      r.twin = r.id;
      continue;
    }
    auto it = exact.find(twin_key(r.config));
    if (it == exact.end()) continue;
    const RunRecord* t = it->second.front();
    r.eval_loss_gap = *r.final_eval_loss - *t->final_eval_loss;
    r.twin = t->id;
  }
  // Accuracy gaps (--eval-task): against the best exact twin that has an accuracy, by the same
  // order; it names the twin when the loss gap found none.
  std::map<std::string, std::vector<const RunRecord*>> exact_acc;
  for (const auto& r : runs)
    if (is_exact_spec(r.net) && r.final_accuracy && !r.path.empty()) exact_acc[twin_key(r.config)].push_back(&r);
  for (auto& [k, v] : exact_acc)
    std::stable_sort(v.begin(), v.end(), [](const RunRecord* a, const RunRecord* b) {
      const bool ca = a->status == "completed", cb = b->status == "completed";
      if (ca != cb) return ca;
      return a->id < b->id;
    });
  for (auto& r : runs) {
    r.accuracy_gap.reset();
    r.accuracy_norm_gap.reset();
    if (!r.final_accuracy || r.path.empty()) continue;
    const RunRecord* t = &r;
    if (!is_exact_spec(r.net)) {
      auto it = exact_acc.find(twin_key(r.config));
      if (it == exact_acc.end()) continue;
      t = it->second.front();
    }
    r.accuracy_gap = *r.final_accuracy - *t->final_accuracy;
    if (r.final_accuracy_norm && t->final_accuracy_norm)
      r.accuracy_norm_gap = *r.final_accuracy_norm - *t->final_accuracy_norm;
    if (r.twin.empty()) r.twin = t->id;
  }
}

bool Summary::has_accuracy() const {
  for (const auto& r : runs)
    if (r.final_accuracy) return true;
  return false;
}

bool Summary::has_divergence() const {
  for (const auto& r : runs)
    if (r.final_replica_divergence) return true;
  return false;
}

Summary summarize_dir(const std::string& dir) {
  Summary s;
  s.dir = dir;
  const auto folders = find_run_dirs(dir);
  const GridInfo grid = read_grid(fs::path(dir));
  s.from_grid = grid.present && !grid.swept_keys.empty();

  std::set<std::string> seen;
  for (const auto& [id, folder] : folders) {
    s.runs.push_back(load_run(id, folder));
    seen.insert(id);
  }
  // Runs grid.json lists that never wrote a metrics.h5 (failed before training, or pending).
  for (const auto& id : grid.order)
    if (!seen.count(id)) {
      RunRecord r;
      r.id = id;
      r.status = grid.runs.at(id).status;
      s.runs.push_back(std::move(r));
    }
  std::sort(s.runs.begin(), s.runs.end(),
            [](const RunRecord& a, const RunRecord& b) { return a.id < b.id; });

  // Parameters and their values.
  if (s.from_grid) {
    for (const auto& k : grid.swept_keys)
      if (!kFixedParams.count(k)) s.params.push_back(k);
  } else {
    std::set<std::string> keys;
    for (const auto& r : s.runs)
      for (const auto& [k, v] : r.config.items()) keys.insert(k);
    for (const auto& k : keys) {
      const std::string p = normalize_param(k);
      if (k == "out" || k == "threads" || kFixedParams.count(p)) continue;
      std::set<std::string> values;
      for (const auto& r : s.runs)
        if (!r.path.empty())
          values.insert(r.config.contains(k) ? format_json_value(r.config[k]) : std::string());
      if (values.size() > 1) s.params.push_back(p);
    }
  }
  for (auto& r : s.runs) {
    const GridEntry* g = nullptr;
    if (auto it = grid.runs.find(r.id); it != grid.runs.end()) g = &it->second;
    auto swept = [&](const std::string& key) -> const json* {
      if (g && g->swept.contains(key)) return &g->swept[key];
      return nullptr;
    };
    for (const auto& p : s.params) {
      if (const json* v = swept(p))
        r.params[p] = format_json_value(*v);
      else if (r.config.contains(config_key(p)))
        r.params[p] = format_json_value(r.config[config_key(p)]);
      else
        r.params[p] = "";
    }
    if (r.net.empty())
      if (const json* v = swept("net")) r.net = format_json_value(*v);
    if (!r.seed)
      if (const json* v = swept("seed")) r.seed = json_int(*v);
    if (!r.tp)
      if (const json* v = swept("tp")) r.tp = json_int(*v);
    if (!r.dp)
      if (const json* v = swept("dp")) r.dp = json_int(*v);
    // A run killed without a chance to say so still reads "running" in its file; the grid
    // runner knows better.
    if (g && !g->status.empty() && (r.status.empty() || r.status == "running"))
      r.status = g->status;
    if (r.path.empty()) r.iterations.reset();
  }
  compute_gaps(s.runs);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Aggregation and CSV

std::vector<std::string> group_columns(const Summary& s) {
  std::vector<std::string> cols = s.params;
  cols.push_back("net");
  cols.push_back("tp");
  cols.push_back("dp");
  return cols;
}

std::vector<SeedGroup> aggregate_over_seeds(const Summary& s) {
  std::vector<SeedGroup> groups;
  std::map<std::vector<std::string>, size_t> index;
  for (const auto& r : s.runs) {
    std::vector<std::string> key;
    for (const auto& p : s.params) key.push_back(r.params.count(p) ? r.params.at(p) : "");
    key.push_back(r.net);
    key.push_back(opt_cell(r.tp));
    key.push_back(opt_cell(r.dp));
    auto [it, fresh] = index.emplace(key, groups.size());
    if (fresh) {
      groups.emplace_back();
      groups.back().key = key;
    }
    groups[it->second].run_ids.push_back(r.id);
  }
  // Order: by the parameters (numbers as numbers), the exact group first among equals, then
  // in order of first appearance.
  const size_t np = s.params.size();
  std::stable_sort(groups.begin(), groups.end(), [np](const SeedGroup& a, const SeedGroup& b) {
    for (size_t i = 0; i < np; ++i) {
      if (a.key[i] == b.key[i]) continue;
      char* ea = nullptr;
      char* eb = nullptr;
      const double x = std::strtod(a.key[i].c_str(), &ea), y = std::strtod(b.key[i].c_str(), &eb);
      if (!a.key[i].empty() && !b.key[i].empty() && *ea == '\0' && *eb == '\0' && x != y)
        return x < y;
      return a.key[i] < b.key[i];
    }
    return is_exact_spec(a.key[np]) && !is_exact_spec(b.key[np]);
  });
  std::map<std::string, const RunRecord*> by_id;
  for (const auto& r : s.runs) by_id[r.id] = &r;
  for (auto& g : groups) {
    std::vector<double> fel, gap, olr, acc[4], div, tpb, dpb;
    for (const auto& id : g.run_ids) {
      const RunRecord& r = *by_id.at(id);
      if (r.status != "completed") continue;
      ++g.completed;
      const std::optional<double>* a[4] = {&r.final_accuracy, &r.accuracy_gap, &r.final_accuracy_norm,
                                           &r.accuracy_norm_gap};
      for (int i = 0; i < 4; ++i)
        if (*a[i] && std::isfinite(**a[i])) acc[i].push_back(**a[i]);
      if (r.final_eval_loss && std::isfinite(*r.final_eval_loss)) fel.push_back(*r.final_eval_loss);
      if (r.eval_loss_gap && std::isfinite(*r.eval_loss_gap)) gap.push_back(*r.eval_loss_gap);
      if (r.observed_loss_rate && std::isfinite(*r.observed_loss_rate))
        olr.push_back(*r.observed_loss_rate);
      if (r.final_replica_divergence && std::isfinite(*r.final_replica_divergence))
        div.push_back(*r.final_replica_divergence);
      if (r.tp_bytes_per_iteration) tpb.push_back(*r.tp_bytes_per_iteration);
      if (r.dp_bytes_per_iteration) dpb.push_back(*r.dp_bytes_per_iteration);
    }
    g.final_eval_loss = describe_sample(fel);
    g.eval_loss_gap = describe_sample(gap);
    if (g.eval_loss_gap.ci_low)
      g.gap_ci_contains_zero = *g.eval_loss_gap.ci_low <= 0 && 0 <= *g.eval_loss_gap.ci_high;
    g.observed_loss_rate_mean = describe_sample(olr).mean;
    g.tp_bytes_per_iteration_mean = describe_sample(tpb).mean;
    g.dp_bytes_per_iteration_mean = describe_sample(dpb).mean;
    g.final_accuracy = describe_sample(acc[0]);
    g.accuracy_gap = describe_sample(acc[1]);
    g.final_accuracy_norm = describe_sample(acc[2]);
    g.accuracy_norm_gap = describe_sample(acc[3]);
    g.final_replica_divergence = describe_sample(div);
  }
  return groups;
}

std::string summary_csv(const Summary& s) {
  std::vector<std::string> header = {"run"};
  header.insert(header.end(), s.params.begin(), s.params.end());
  for (const char* c : {"net", "seed", "tp", "dp", "status", "iterations", "final_train_loss",
                        "final_eval_loss", "best_eval_loss", "observed_loss_rate",
                        "net_stationary_loss_rate", "tokens_per_second", "sim_comm_seconds",
                        "tp_bytes_per_iteration", "dp_bytes_per_iteration",
                        "data_entropy_floor", "eval_loss_gap", "exact_twin"})
    header.push_back(c);
  const bool acc = s.has_accuracy();  // accuracy columns only for --eval-task runs
  if (acc)
    for (const char* c : {"final_accuracy", "final_accuracy_norm", "accuracy_gap", "accuracy_norm_gap"})
      header.push_back(c);
  const bool div = s.has_divergence();  // runs that logged the replica divergence
  if (div) header.push_back("final_replica_divergence");
  std::string out;
  append_row(out, header);
  for (const auto& r : s.runs) {
    std::vector<std::string> row = {r.id};
    for (const auto& p : s.params) row.push_back(r.params.count(p) ? r.params.at(p) : "");
    for (const std::string& c :
         {r.net, opt_cell(r.seed), opt_cell(r.tp), opt_cell(r.dp), r.status,
          opt_cell(r.iterations), opt_cell(r.final_train_loss), opt_cell(r.final_eval_loss),
          opt_cell(r.best_eval_loss), opt_cell(r.observed_loss_rate),
          opt_cell(r.net_stationary_loss_rate), opt_cell(r.tokens_per_second),
          opt_cell(r.sim_comm_seconds), opt_cell(r.tp_bytes_per_iteration),
          opt_cell(r.dp_bytes_per_iteration), opt_cell(r.data_entropy_floor),
          opt_cell(r.eval_loss_gap), r.twin})
      row.push_back(c);
    if (acc)
      for (const auto* v : {&r.final_accuracy, &r.final_accuracy_norm, &r.accuracy_gap, &r.accuracy_norm_gap})
        row.push_back(opt_cell(*v));
    if (div) row.push_back(opt_cell(r.final_replica_divergence));
    append_row(out, row);
  }
  return out;
}

std::string aggregate_csv(const Summary& s, const std::vector<SeedGroup>& groups) {
  std::vector<std::string> header = group_columns(s);
  for (const char* c :
       {"runs", "completed", "final_eval_loss_mean", "final_eval_loss_std",
        "final_eval_loss_ci95_low", "final_eval_loss_ci95_high", "eval_loss_gap_mean",
        "eval_loss_gap_std", "eval_loss_gap_ci95_low", "eval_loss_gap_ci95_high",
        "gap_ci_contains_zero", "observed_loss_rate_mean", "tp_bytes_per_iteration_mean",
        "dp_bytes_per_iteration_mean"})
    header.push_back(c);
  const bool acc = s.has_accuracy();
  if (acc)
    for (const char* stat : {"final_accuracy", "accuracy_gap", "final_accuracy_norm", "accuracy_norm_gap"})
      for (const char* part : {"_mean", "_std", "_ci95_low", "_ci95_high"}) header.push_back(std::string(stat) + part);
  const bool div = s.has_divergence();
  if (div)
    for (const char* part : {"_mean", "_std", "_ci95_low", "_ci95_high"})
      header.push_back(std::string("final_replica_divergence") + part);
  std::string out;
  append_row(out, header);
  for (const auto& g : groups) {
    std::vector<std::string> row = g.key;
    const Stat& f = g.final_eval_loss;
    const Stat& d = g.eval_loss_gap;
    for (const std::string& c :
         {std::to_string(g.run_ids.size()), std::to_string(g.completed), opt_cell(f.mean),
          opt_cell(f.std), opt_cell(f.ci_low), opt_cell(f.ci_high), opt_cell(d.mean),
          opt_cell(d.std), opt_cell(d.ci_low), opt_cell(d.ci_high),
          std::string(g.gap_ci_contains_zero ? (*g.gap_ci_contains_zero ? "true" : "false") : ""),
          opt_cell(g.observed_loss_rate_mean), opt_cell(g.tp_bytes_per_iteration_mean),
          opt_cell(g.dp_bytes_per_iteration_mean)})
      row.push_back(c);
    if (acc)
      for (const Stat* a : {&g.final_accuracy, &g.accuracy_gap, &g.final_accuracy_norm, &g.accuracy_norm_gap})
        for (const auto* v : {&a->mean, &a->std, &a->ci_low, &a->ci_high}) row.push_back(opt_cell(*v));
    if (div) {
      const Stat& v = g.final_replica_divergence;
      for (const auto* x : {&v.mean, &v.std, &v.ci_low, &v.ci_high}) row.push_back(opt_cell(*x));
    }
    append_row(out, row);
  }
  return out;
}

}  // namespace lossytp::analysis
