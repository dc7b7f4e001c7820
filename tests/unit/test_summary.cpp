// The analysis step: reading a folder of runs, pairing lossy runs with their exact twins,
// aggregating seeds with Student-t intervals, RFC 4180 CSV, the errors a user sees, and the
// embedded plotting script.
#include <catch2/catch.hpp>

#include "common/temp_dir.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "analysis/commands.h"
#include "analysis/plot_script.h"
#include "analysis/summary.h"
#include "experiments/metrics_file.h"

// RunSpec{.net = ..., .seed = ...} leaves the other fields at their defaults on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace lossytp;
using namespace lossytp::analysis;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct TempDir : testing::TempDir {
  TempDir() : testing::TempDir("summary") {}
};

json base_config() {
  return json{{"model", "gpt-tiny"}, {"num-layers", 1}, {"hidden-size", 32},
              {"tensor-model-parallel-size", 2}, {"data-parallel-size", 1},
              {"lr", 0.0010000000474974513}, {"train-iters", 4}, {"seed", 1},
              {"net", "exact"}, {"threads", 1}};
}

struct RunSpec {
  std::string net = "exact";      // canonical, stored in the `net` attribute
  std::string config_net;         // --net as given (default: net)
  int seed = 1;
  std::string status = "completed";
  std::vector<double> train = {4.0, 3.5, 3.0, 2.5};
  std::vector<double> eval = {3.2};
  double loss_rate = 0.0;
  std::map<std::string, json> config_overrides;
  std::vector<double> acc, acc_norm;  // /eval/accuracy{,_norm} (--eval-task); none when empty
};

void write_run(const fs::path& root, const std::string& id, const RunSpec& r) {
  fs::create_directories(root / id);
  json cfg = base_config();
  cfg["net"] = r.config_net.empty() ? r.net : r.config_net;
  cfg["seed"] = r.seed;
  cfg["out"] = (root / id).string();
  for (const auto& [k, v] : r.config_overrides) cfg[k] = v;
  MetricsFile m((root / id / "metrics.h5").string());
  m.set_attr("config", cfg.dump());
  m.set_attr("status", r.status);
  m.set_attr("version", std::string("0.1.0"));
  m.set_attr("net", r.net);
  m.set_attr("observed_loss_rate", r.loss_rate);
  m.set_attr("net_stationary_loss_rate", r.loss_rate);
  m.set_attr("tokens_per_second", 1000.0);
  m.set_attr("data_entropy_floor", 2.0188);
  for (size_t i = 0; i < r.train.size(); ++i) {
    m.append("train/iteration", static_cast<double>(i + 1));
    m.append("train/loss", r.train[i]);
    m.append("train/sim_comm_s", 0.25);
  }
  for (size_t i = 0; i < r.eval.size(); ++i) {
    m.append("eval/iteration", static_cast<double>(2 * (i + 1)));
    m.append("eval/loss", r.eval[i]);
  }
  for (size_t i = 0; i < r.acc.size(); ++i) {
    m.append("eval/accuracy", r.acc[i]);
    m.append("eval/accuracy_norm", r.acc_norm[i]);
  }
  m.flush();
}

// Minimal RFC 4180 reader: rows of fields.
std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> rows(1);
  std::string field;
  bool quoted = false, field_started = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c == '"') {
      quoted = true;
      field_started = true;
    } else if (c == ',') {
      rows.back().push_back(field);
      field.clear();
    } else if (c == '\n') {
      rows.back().push_back(field);
      field.clear();
      rows.emplace_back();
    } else {
      field += c;
      field_started = true;
    }
  }
  (void)field_started;
  if (rows.back().empty()) rows.pop_back();
  return rows;
}

// Rows as maps column -> cell.
std::vector<std::map<std::string, std::string>> csv_records(const std::string& text) {
  const auto rows = parse_csv(text);
  std::vector<std::map<std::string, std::string>> out;
  REQUIRE(!rows.empty());
  for (size_t r = 1; r < rows.size(); ++r) {
    REQUIRE(rows[r].size() == rows[0].size());
    std::map<std::string, std::string> rec;
    for (size_t c = 0; c < rows[0].size(); ++c) rec[rows[0][c]] = rows[r][c];
    out.push_back(rec);
  }
  return out;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

const RunRecord& find_run(const Summary& s, const std::string& id) {
  for (const auto& r : s.runs)
    if (r.id == id) return r;
  FAIL("no run " << id);
  throw std::logic_error("unreachable");
}

const SeedGroup& find_group(const std::vector<SeedGroup>& groups, const std::string& net) {
  for (const auto& g : groups)
    if (g.key[g.key.size() - 3] == net) return g;
  FAIL("no group " << net);
  throw std::logic_error("unreachable");
}

double num(const std::string& cell) { return std::stod(cell); }

}  // namespace

TEST_CASE("Student t quantiles match the table for 1..30 degrees of freedom", "[analysis]") {
  // t_{0.975, dof} (two-sided 95 %), from standard tables (6 decimals).
  const double table[] = {12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624,
                          2.306004,  2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787,
                          2.131450,  2.119905, 2.109816, 2.100922, 2.093024, 2.085963, 2.079614,
                          2.073873,  2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407,
                          2.045230,  2.042272};
  for (int dof = 1; dof <= 30; ++dof) {
    INFO("dof " << dof);
    CHECK(std::fabs(student_t_quantile(0.975, dof) - table[dof - 1]) < 1e-5);
  }
  CHECK(student_t_quantile(0.995, 1) == Approx(63.656741).epsilon(1e-7));
  CHECK(student_t_quantile(0.025, 4) == Approx(-2.776445).epsilon(1e-6));
  CHECK(student_t_quantile(0.5, 7) == 0.0);
  CHECK(student_t_quantile(0.975, 1e6) == Approx(1.959966).epsilon(1e-6));  // -> normal
  CHECK(student_t_cdf(0.0, 3) == Approx(0.5));
  CHECK(student_t_cdf(student_t_quantile(0.9, 5), 5) == Approx(0.9).epsilon(1e-12));
  CHECK(std::isnan(student_t_quantile(1.0, 3)));
}

TEST_CASE("describe_sample: mean, sample std and t interval by hand", "[analysis]") {
  const Stat s = describe_sample({0.1, 0.3, 0.2});
  REQUIRE(s.mean);
  CHECK(*s.mean == Approx(0.2));
  CHECK(*s.std == Approx(0.1));  // sqrt((0.01 + 0.01 + 0) / 2)
  const double half = 4.302653 * 0.1 / std::sqrt(3.0);
  CHECK(*s.ci_low == Approx(0.2 - half).epsilon(1e-6));
  CHECK(*s.ci_high == Approx(0.2 + half).epsilon(1e-6));
  const Stat one = describe_sample({5.0});
  CHECK(*one.mean == 5.0);
  CHECK_FALSE(one.std);
  CHECK_FALSE(one.ci_low);
  CHECK_FALSE(describe_sample({}).mean);
}

TEST_CASE("exact rows have gap 0, lossy rows the difference to their exact twin", "[analysis]") {
  TempDir t;
  RunSpec e1{.net = "exact", .seed = 1, .eval = {3.4, 3.20}};
  RunSpec e2{.net = "exact", .seed = 2, .eval = {3.5, 3.30}};
  RunSpec d1{.net = "drop:rate=0.05", .seed = 1, .eval = {3.6, 3.45}, .loss_rate = 0.049};
  RunSpec d2{.net = "drop:rate=0.05", .seed = 2, .eval = {3.7, 3.40}, .loss_rate = 0.051};
  write_run(t.dir, "exact-s1", e1);
  write_run(t.dir, "exact-s2", e2);
  write_run(t.dir, "drop-s1", d1);
  write_run(t.dir, "drop-s2", d2);
  const Summary s = summarize_dir(t.str());
  REQUIRE(s.runs.size() == 4);
  CHECK(s.runs[0].id == "drop-s1");  // sorted by id
  CHECK(*find_run(s, "exact-s1").eval_loss_gap == 0.0);
  CHECK(*find_run(s, "exact-s2").eval_loss_gap == 0.0);
  CHECK(*find_run(s, "drop-s1").eval_loss_gap == Approx(3.45 - 3.20));
  CHECK(find_run(s, "drop-s1").twin == "exact-s1");
  CHECK(*find_run(s, "drop-s2").eval_loss_gap == Approx(3.40 - 3.30));
  CHECK(find_run(s, "drop-s2").twin == "exact-s2");
  // Other columns.
  const RunRecord& d = find_run(s, "drop-s1");
  CHECK(*d.iterations == 4);
  CHECK(*d.final_train_loss == Approx((4.0 + 3.5 + 3.0 + 2.5) / 4));  // n < 10: all of them
  CHECK(*d.final_eval_loss == 3.45);
  CHECK(*d.best_eval_loss == 3.45);
  CHECK(*d.sim_comm_seconds == Approx(1.0));
  CHECK(*d.tp == 2);
  CHECK(*d.dp == 1);
  CHECK(*d.seed == 1);
  CHECK(s.params.empty());  // only net, seed and out differ: all fixed or excluded columns

  const auto recs = csv_records(summary_csv(s));
  REQUIRE(recs.size() == 4);
  for (const auto& r : recs) {
    if (r.at("net") == "exact") CHECK(r.at("eval_loss_gap") == "0");
    CHECK(r.at("status") == "completed");
  }
  CHECK(num(recs[0].at("eval_loss_gap")) == Approx(0.25));
  CHECK(recs[0].at("observed_loss_rate") == "0.049");
  CHECK(recs[0].at("final_eval_loss") == "3.45");
  CHECK(recs[0].at("data_entropy_floor") == "2.0188");
}

TEST_CASE("--eval-task accuracy: final values, gaps to the exact twin, CIs over seeds", "[analysis]") {
  TempDir t;
  write_run(t.dir, "exact-s1", {.net = "exact", .seed = 1, .eval = {3.4, 3.2}, .acc = {0.3, 0.80}, .acc_norm = {0.3, 0.82}});
  write_run(t.dir, "exact-s2", {.net = "exact", .seed = 2, .eval = {3.5, 3.3}, .acc = {0.3, 0.70}, .acc_norm = {0.3, 0.72}});
  write_run(t.dir, "drop-s1", {.net = "drop:rate=0.05", .seed = 1, .eval = {3.6, 3.45}, .acc = {0.2, 0.75},
                               .acc_norm = {0.2, 0.80}});
  write_run(t.dir, "drop-s2", {.net = "drop:rate=0.05", .seed = 2, .eval = {3.7, 3.4}, .acc = {0.2, 0.60},
                               .acc_norm = {0.2, 0.70}});
  const Summary s = summarize_dir(t.str());
  REQUIRE(s.has_accuracy());
  const RunRecord& d1 = find_run(s, "drop-s1");
  CHECK(*d1.final_accuracy == 0.75);
  CHECK(*d1.final_accuracy_norm == 0.80);
  CHECK(*d1.accuracy_gap == Approx(0.75 - 0.80));
  CHECK(*d1.accuracy_norm_gap == Approx(0.80 - 0.82));
  CHECK(*find_run(s, "drop-s2").accuracy_gap == Approx(0.60 - 0.70));
  CHECK(*find_run(s, "exact-s2").accuracy_gap == 0.0);

  const auto recs = csv_records(summary_csv(s));
  CHECK(recs[0].at("final_accuracy") == "0.75");
  CHECK(num(recs[0].at("accuracy_gap")) == Approx(-0.05));
  CHECK(num(recs[0].at("accuracy_norm_gap")) == Approx(-0.02));
  CHECK(recs[2].at("accuracy_gap") == "0");  // exact-s1

  const auto groups = aggregate_over_seeds(s);
  const SeedGroup& dr = find_group(groups, "drop:rate=0.05");
  const double t1 = 12.706205;  // t_{0.975, 1}
  CHECK(*dr.final_accuracy.mean == Approx(0.675));
  CHECK(*dr.final_accuracy.std == Approx(0.15 / std::sqrt(2.0)));
  CHECK(*dr.accuracy_gap.mean == Approx(-0.075));
  CHECK(*dr.accuracy_gap.std == Approx(0.05 / std::sqrt(2.0)));
  CHECK(*dr.accuracy_gap.ci_low == Approx(-0.075 - t1 * 0.025).epsilon(1e-6));
  CHECK(*dr.final_accuracy_norm.mean == Approx(0.75));
  CHECK(*dr.accuracy_norm_gap.mean == Approx(-0.02));
  CHECK(*dr.accuracy_norm_gap.std == Approx(0.0).margin(1e-12));
  const auto agg = csv_records(aggregate_csv(s, groups));
  const auto& row = agg[0].at("net") == "exact" ? agg[1] : agg[0];
  CHECK(num(row.at("final_accuracy_mean")) == Approx(0.675));
  CHECK(num(row.at("accuracy_gap_ci95_high")) == Approx(-0.075 + t1 * 0.025).epsilon(1e-6));
  CHECK(row.count("final_accuracy_norm_std") == 1);
}

TEST_CASE("runs without accuracy: no accuracy columns; mixed folders leave cells empty", "[analysis]") {
  TempDir t;
  write_run(t.dir, "exact-s1", {.net = "exact", .seed = 1});
  write_run(t.dir, "drop-s1", {.net = "drop:rate=0.05", .seed = 1, .eval = {3.5}});
  {
    const Summary s = summarize_dir(t.str());
    CHECK_FALSE(s.has_accuracy());
    CHECK(summary_csv(s).find("accuracy") == std::string::npos);
    CHECK(aggregate_csv(s, aggregate_over_seeds(s)).find("accuracy") == std::string::npos);
    CHECK(*find_run(s, "drop-s1").eval_loss_gap == Approx(0.3));
  }
  // a new lossy run with accuracy beside the old exact one without: no accuracy gap to take
  write_run(t.dir, "ge-s1", {.net = "ge:p=0.01,r=0.5", .seed = 1, .eval = {3.6}, .acc = {0.5}, .acc_norm = {0.6}});
  const Summary s = summarize_dir(t.str());
  CHECK(s.has_accuracy());
  const auto recs = csv_records(summary_csv(s));
  REQUIRE(recs.size() == 3);
  CHECK(recs[0].at("final_accuracy") == "");   // drop-s1
  CHECK(recs[2].at("final_accuracy") == "0.5");  // ge-s1
  CHECK(recs[2].at("final_accuracy_norm") == "0.6");
  CHECK(recs[2].at("accuracy_gap") == "");
  CHECK(recs[2].at("exact_twin") == "exact-s1");  // the loss twin
  CHECK(num(recs[2].at("eval_loss_gap")) == Approx(0.4));
}

TEST_CASE("final train loss averages the last 10 iterations", "[analysis]") {
  TempDir t;
  RunSpec r;
  r.train.clear();
  for (int i = 0; i < 25; ++i) r.train.push_back(100.0 - i);  // last 10: 85..76
  write_run(t.dir, "a", r);
  const Summary s = summarize_dir(t.str());
  CHECK(*s.runs[0].final_train_loss == Approx((85.0 + 76.0) / 2));
  CHECK(*s.runs[0].iterations == 25);
}

TEST_CASE("aggregate over seeds: mean, std and CI by hand, CI contains zero both ways",
          "[analysis]") {
  TempDir t;
  // exact: eval losses 3.0, 3.2, 3.4; "drop": gaps 0.1, 0.3, 0.2 (CI contains 0);
  // "ge": gaps 0.5, 0.6, 0.7 (CI excludes 0).
  const double exact_eval[] = {3.0, 3.2, 3.4};
  const double drop_gap[] = {0.1, 0.3, 0.2};
  const double ge_gap[] = {0.5, 0.6, 0.7};
  for (int seed = 1; seed <= 3; ++seed) {
    const double e = exact_eval[seed - 1];
    write_run(t.dir, "exact-s" + std::to_string(seed),
              RunSpec{.net = "exact", .seed = seed, .eval = {e}});
    write_run(t.dir, "drop-s" + std::to_string(seed),
              RunSpec{.net = "drop:rate=0.1", .seed = seed, .eval = {e + drop_gap[seed - 1]},
                      .loss_rate = 0.09 + 0.01 * seed});
    write_run(t.dir, "ge-s" + std::to_string(seed),
              RunSpec{.net = "ge:p=0.01,r=0.19,k=1,h=0", .seed = seed,
                      .eval = {e + ge_gap[seed - 1]}, .loss_rate = 0.05});
  }
  // A diverged seed: a row, but not in the statistics.
  write_run(t.dir, "drop-s4", RunSpec{.net = "drop:rate=0.1", .seed = 4, .status = "diverged",
                                      .train = {4.0, NAN}, .eval = {}});
  const Summary s = summarize_dir(t.str());
  REQUIRE(s.runs.size() == 10);
  const auto groups = aggregate_over_seeds(s);
  REQUIRE(groups.size() == 3);

  const SeedGroup& ex = find_group(groups, "exact");
  CHECK(ex.completed == 3);
  CHECK(*ex.final_eval_loss.mean == Approx(3.2));
  CHECK(*ex.final_eval_loss.std == Approx(0.2));
  const double half_exact = 4.302653 * 0.2 / std::sqrt(3.0);
  CHECK(*ex.final_eval_loss.ci_low == Approx(3.2 - half_exact).epsilon(1e-6));
  CHECK(*ex.final_eval_loss.ci_high == Approx(3.2 + half_exact).epsilon(1e-6));
  CHECK(*ex.eval_loss_gap.mean == 0.0);
  CHECK(*ex.gap_ci_contains_zero);

  const SeedGroup& dr = find_group(groups, "drop:rate=0.1");
  CHECK(dr.run_ids.size() == 4);
  CHECK(dr.completed == 3);
  CHECK(*dr.eval_loss_gap.mean == Approx(0.2));
  CHECK(*dr.eval_loss_gap.std == Approx(0.1));
  const double half = 4.302653 * 0.1 / std::sqrt(3.0);  // 0.248414
  CHECK(*dr.eval_loss_gap.ci_low == Approx(0.2 - half).epsilon(1e-6));
  CHECK(*dr.eval_loss_gap.ci_high == Approx(0.2 + half).epsilon(1e-6));
  CHECK(*dr.gap_ci_contains_zero == true);
  CHECK(*dr.observed_loss_rate_mean == Approx(0.11));

  const SeedGroup& ge = find_group(groups, "ge:p=0.01,r=0.19,k=1,h=0");
  CHECK(*ge.eval_loss_gap.mean == Approx(0.6));
  CHECK(*ge.eval_loss_gap.ci_low == Approx(0.6 - half).epsilon(1e-6));
  CHECK(*ge.gap_ci_contains_zero == false);

  // The CSV: spec with commas quoted, booleans as true/false, diverged row with empty cells.
  const std::string agg = aggregate_csv(s, groups);
  CHECK(agg.find("\"ge:p=0.01,r=0.19,k=1,h=0\",2,1,3,3,") != std::string::npos);
  const auto recs = csv_records(agg);
  REQUIRE(recs.size() == 3);
  std::map<std::string, std::map<std::string, std::string>> by_net;
  for (const auto& r : recs) by_net[r.at("net")] = r;
  CHECK(by_net["drop:rate=0.1"].at("runs") == "4");
  CHECK(by_net["drop:rate=0.1"].at("completed") == "3");
  CHECK(by_net["drop:rate=0.1"].at("gap_ci_contains_zero") == "true");
  CHECK(by_net["ge:p=0.01,r=0.19,k=1,h=0"].at("gap_ci_contains_zero") == "false");
  CHECK(num(by_net["drop:rate=0.1"].at("eval_loss_gap_ci95_high")) ==
        Approx(0.2 + half).epsilon(1e-6));
  CHECK(num(by_net["exact"].at("final_eval_loss_std")) == Approx(0.2));

  const auto rows = csv_records(summary_csv(s));
  bool saw_diverged = false;
  for (const auto& r : rows)
    if (r.at("run") == "drop-s4") {
      saw_diverged = true;
      CHECK(r.at("status") == "diverged");
      CHECK(r.at("final_eval_loss").empty());
      CHECK(r.at("best_eval_loss").empty());
      CHECK(r.at("eval_loss_gap").empty());
      CHECK(r.at("final_train_loss") == "nan");
    }
  CHECK(saw_diverged);
}

TEST_CASE("gap CI is empty with one seed; a lossy run without a twin has no gap", "[analysis]") {
  TempDir t;
  write_run(t.dir, "exact", RunSpec{.net = "exact", .eval = {3.0}});
  write_run(t.dir, "drop", RunSpec{.net = "drop:rate=0.1", .eval = {3.3}});
  // Different lr: no exact run shares its config.
  write_run(t.dir, "drop-lr", RunSpec{.net = "drop:rate=0.1", .eval = {3.1},
                                      .config_overrides = {{"lr", 0.003}}});
  // Different seed: no exact run with seed 7.
  write_run(t.dir, "drop-seed7", RunSpec{.net = "drop:rate=0.1", .seed = 7, .eval = {3.2}});
  // Twins ignore out, threads, net-only keys and operational keys.
  write_run(t.dir, "drop-threads", RunSpec{.net = "drop:rate=0.1", .eval = {3.4},
                                           .config_overrides = {{"threads", 8},
                                                                {"net-seed", 5},
                                                                {"save-interval", 7}}});
  const Summary s = summarize_dir(t.str());
  CHECK(*find_run(s, "drop").eval_loss_gap == Approx(0.3));
  CHECK_FALSE(find_run(s, "drop-lr").eval_loss_gap);
  CHECK_FALSE(find_run(s, "drop-seed7").eval_loss_gap);
  CHECK(*find_run(s, "drop-threads").eval_loss_gap == Approx(0.4));
  // lr, net-seed and save-interval differ between runs (threads is excluded): columns.
  CHECK(s.params == std::vector<std::string>{"lr", "net-seed", "save-interval"});
  CHECK(find_run(s, "drop").params.at("lr") == "0.001");  // float32 in the config, shown short
  CHECK(find_run(s, "drop-lr").params.at("lr") == "0.003");
  const auto rows = csv_records(summary_csv(s));
  for (const auto& r : rows)
    if (r.at("run") == "drop-lr") CHECK(r.at("eval_loss_gap").empty());

  const auto groups = aggregate_over_seeds(s);
  for (const auto& g : groups) CHECK_FALSE(g.gap_ci_contains_zero);  // every group has n < 2
  const auto agg = csv_records(aggregate_csv(s, groups));
  for (const auto& r : agg) {
    CHECK(r.at("gap_ci_contains_zero").empty());
    // "drop" and "drop-seed7" differ only in the seed: one group of two runs, one gap.
    if (r.at("runs") == "1") CHECK(r.at("final_eval_loss_std").empty());
    if (r.at("net") == "drop:rate=0.1" && r.at("lr") == "0.001" && r.at("net-seed").empty() &&
        r.at("save-interval").empty()) {
      CHECK(r.at("runs") == "2");
      CHECK(num(r.at("final_eval_loss_mean")) == Approx(3.25));
      CHECK(num(r.at("eval_loss_gap_mean")) == Approx(0.3));
    }
  }
}

TEST_CASE("grid.json names the swept parameters and lists runs without metrics", "[analysis]") {
  TempDir t;
  write_run(t.dir, "a", RunSpec{.net = "exact", .config_net = "exact", .seed = 1, .eval = {3.0}});
  write_run(t.dir, "b", RunSpec{.net = "ge:p=0.01,r=0.19,k=1,h=0", .config_net = "ge:preset=one",
                                .seed = 1, .eval = {3.5}});
  write_run(t.dir, "c", RunSpec{.net = "ge:p=0.01,r=0.19,k=1,h=0", .config_net = "ge:preset=one",
                                .seed = 1, .status = "running", .eval = {3.6},
                                .config_overrides = {{"lr", 0.003}}});
  json grid = {{"runs",
                {{{"id", "a"}, {"status", "completed"},
                  {"swept", {{"net", "exact"}, {"tp", 2}, {"seed", 1}, {"lr", 0.001}}}},
                 {{"id", "b"}, {"status", "completed"},
                  {"swept", {{"net", "ge:preset=one"}, {"tp", 2}, {"seed", 1}, {"lr", 0.001}}}},
                 {{"id", "c"}, {"status", "failed"},
                  {"swept", {{"net", "ge:preset=one"}, {"tp", 2}, {"seed", 1}, {"lr", 0.003}}}},
                 {{"id", "d"}, {"status", "failed"},
                  {"swept", {{"net", "drop:rate=0.1"}, {"tp", 4}, {"seed", 2}, {"lr", 0.001}}}}}}};
  std::ofstream(t.dir / "grid.json") << grid.dump(2);
  const Summary s = summarize_dir(t.str());
  CHECK(s.from_grid);
  CHECK(s.params == std::vector<std::string>{"lr"});  // net, tp, seed have columns of their own
  REQUIRE(s.runs.size() == 4);
  CHECK(find_run(s, "b").params.at("lr") == "0.001");
  CHECK(find_run(s, "b").net == "ge:p=0.01,r=0.19,k=1,h=0");  // canonical from metrics.h5
  CHECK(find_run(s, "c").status == "failed");  // file says running, the grid runner knows better
  const RunRecord& d = find_run(s, "d");
  CHECK(d.status == "failed");
  CHECK(d.path.empty());
  CHECK(d.net == "drop:rate=0.1");
  CHECK(*d.tp == 4);
  CHECK(*d.seed == 2);
  CHECK_FALSE(d.iterations);
  const auto rows = csv_records(summary_csv(s));
  REQUIRE(rows.size() == 4);
  CHECK(rows[3].at("run") == "d");
  CHECK(rows[3].at("iterations").empty());
  CHECK(rows[3].at("lr") == "0.001");
  const std::string header = summary_csv(s).substr(0, summary_csv(s).find('\n'));
  CHECK(header.rfind("run,lr,net,seed,tp,dp,status,iterations,final_train_loss,final_eval_loss,"
                     "best_eval_loss,observed_loss_rate,net_stationary_loss_rate,"
                     "tokens_per_second,sim_comm_seconds,tp_bytes_per_iteration,dp_bytes_per_iteration,"
                     "data_entropy_floor,eval_loss_gap",
                     0) == 0);
  const auto groups = aggregate_over_seeds(s);
  CHECK(group_columns(s) == std::vector<std::string>{"lr", "net", "tp", "dp"});
  CHECK(groups.size() == 4);  // (0.001, exact), (0.001, ge), (0.003, ge), (0.001, drop, tp 4)
}

TEST_CASE("CSV quoting follows RFC 4180", "[analysis]") {
  CHECK(csv_field("exact") == "exact");
  CHECK(csv_field("ge:p=0.01,r=0.19") == "\"ge:p=0.01,r=0.19\"");
  CHECK(csv_field("say \"hi\"") == "\"say \"\"hi\"\"\"");
  CHECK(csv_field("two\nlines") == "\"two\nlines\"");
  CHECK(csv_field("") == "");
  CHECK(format_number(0.1) == "0.1");
  CHECK(format_number(1e-12) == "1e-12");
  CHECK(format_number(NAN) == "nan");
  CHECK(format_json_value(json(0.0010000000474974513)) == "0.001");
  CHECK(format_json_value(json(0.1)) == "0.1");
  CHECK(format_json_value(json(2)) == "2");
  CHECK(format_json_value(json(true)) == "true");
  CHECK(format_json_value(json("x,y")) == "x,y");

  TempDir t;
  write_run(t.dir, "odd,\"id\"", RunSpec{.net = "caat:p=0.5+ge:p=0.01,r=0.19,k=1,h=0"});
  const std::string csv = summary_csv(summarize_dir(t.str()));
  CHECK(csv.find("\n\"odd,\"\"id\"\"\",\"caat:p=0.5+ge:p=0.01,r=0.19,k=1,h=0\",1,2,1,") !=
        std::string::npos);
  const auto rows = csv_records(csv);
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].at("run") == "odd,\"id\"");
}

TEST_CASE("spec helpers: exactness and model family", "[analysis]") {
  CHECK(is_exact_spec("exact"));
  CHECK(is_exact_spec("exact:packet=4096,transport=reliable"));
  CHECK_FALSE(is_exact_spec("drop:rate=0"));
  CHECK_FALSE(is_exact_spec("caat:p=0.5"));
  CHECK_FALSE(is_exact_spec("exact+drop:rate=0.1"));
  CHECK_FALSE(is_exact_spec(""));
  CHECK(model_family("caat:p=0.5+ge:p=0.01,r=0.3") == "caat+ge");
  CHECK(model_family("drop:rate=0.01,transport=reliable") == "drop");
  CHECK(model_family("exact") == "exact");
  CHECK(model_family("exact:packet=1+drop:rate=0.1") == "drop");
  CHECK(over_seeds_path("/a/b/summary.csv") == "/a/b/summary_over_seeds.csv");
  CHECK(over_seeds_path("out") == "out_over_seeds");
}

TEST_CASE("a single run folder is a folder of one run", "[analysis]") {
  TempDir t;
  write_run(t.dir, "solo", RunSpec{});
  const Summary s = summarize_dir((t.dir / "solo").string());
  REQUIRE(s.runs.size() == 1);
  CHECK(s.runs[0].id == "solo");
  CHECK(*s.runs[0].eval_loss_gap == 0.0);
}

TEST_CASE("summarize writes both CSVs and nothing else", "[analysis]") {
  TempDir t;
  write_run(t.dir, "e", RunSpec{.net = "exact", .eval = {3.0}});
  write_run(t.dir, "d", RunSpec{.net = "drop:rate=0.1", .eval = {3.3}});
  REQUIRE(run_summarize(t.str(), "", true) == 0);
  CHECK(fs::exists(t.dir / "summary.csv"));
  CHECK(fs::exists(t.dir / "summary_over_seeds.csv"));
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(t.dir)) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 4);  // d/, e/, the two CSVs: no temporary files left
  CHECK(csv_records(read_file(t.dir / "summary.csv")).size() == 2);
  // -o elsewhere, parent folders created; the aggregate goes next to it.
  const fs::path out = t.dir / "elsewhere" / "s.csv";
  REQUIRE(run_summarize(t.str(), out.string(), true) == 0);
  CHECK(fs::exists(out));
  CHECK(fs::exists(t.dir / "elsewhere" / "s_over_seeds.csv"));
}

TEST_CASE("bad input: exit status 2 and nothing written", "[analysis]") {
  TempDir t;
  CHECK_THROWS_WITH(summarize_dir((t.dir / "missing").string()),
                    Catch::Contains("missing") && Catch::Contains("does not exist"));
  CHECK(run_summarize((t.dir / "missing").string(), "", true) == 2);
  CHECK_FALSE(fs::exists(t.dir / "missing"));

  std::ofstream(t.dir / "afile") << "x";
  CHECK_THROWS_WITH(summarize_dir((t.dir / "afile").string()),
                    Catch::Contains("is not a directory"));

  fs::create_directories(t.dir / "empty" / "sub");
  CHECK_THROWS_WITH(summarize_dir((t.dir / "empty").string()), Catch::Contains("no runs in"));
  CHECK(run_summarize((t.dir / "empty").string(), "", true) == 2);
  CHECK_FALSE(fs::exists(t.dir / "empty" / "summary.csv"));

  // A corrupt metrics.h5 among good ones: the message names it, the old CSV survives.
  const fs::path grid = t.dir / "grid";
  write_run(grid, "good", RunSpec{});
  fs::create_directories(grid / "bad");
  std::ofstream(grid / "bad" / "metrics.h5") << "not hdf5 at all";
  std::ofstream(grid / "summary.csv") << "old";
  CHECK_THROWS_WITH(summarize_dir(grid.string()),
                    Catch::Contains((grid / "bad" / "metrics.h5").string()));
  CHECK(run_summarize(grid.string(), "", true) == 2);
  CHECK(read_file(grid / "summary.csv") == "old");
  CHECK_FALSE(fs::exists(grid / "summary_over_seeds.csv"));
  CHECK(run_plot(grid.string(), "", true) == 2);
  CHECK_FALSE(fs::exists(grid / "plots"));

  // A malformed grid.json is named too.
  const fs::path g2 = t.dir / "g2";
  write_run(g2, "good", RunSpec{});
  std::ofstream(g2 / "grid.json") << "{\"runs\": [";
  CHECK_THROWS_WITH(summarize_dir(g2.string()),
                    Catch::Contains("grid.json") && Catch::Contains("not valid JSON"));

  // A config attribute that is not JSON.
  const fs::path g3 = t.dir / "g3";
  fs::create_directories(g3 / "r");
  MetricsFile m((g3 / "r" / "metrics.h5").string());
  m.set_attr("config", std::string("{not json"));
  m.flush();
  CHECK_THROWS_WITH(summarize_dir(g3.string()),
                    Catch::Contains("metrics.h5") && Catch::Contains("'config'"));

  // An output path that is a directory.
  const fs::path g4 = t.dir / "g4";
  write_run(g4, "r", RunSpec{});
  fs::create_directories(g4 / "out.csv");
  CHECK(run_summarize(g4.string(), (g4 / "out.csv").string(), true) == 2);
}

TEST_CASE("the embedded plotting script is analysis/plot.py", "[analysis]") {
  // __FILE__ is tests/unit/test_summary.cpp in the source tree.
  const fs::path src = fs::path(__FILE__).parent_path().parent_path().parent_path();
  const fs::path py = src / "analysis" / "plot.py";
  REQUIRE(fs::exists(py));
  const std::string text = read_file(py);
  INFO("the generated plot_script.cpp is stale: re-run cmake");
  CHECK(std::string(plot_script()) == text);
}
