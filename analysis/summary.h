// The summary of a folder of runs: one row per run (its swept parameters, status, final losses,
// observed loss rate, throughput, simulated communication time and the eval-loss gap against its
// exact twin; with --eval-task, the final accuracy and its gap) and one row per configuration
// aggregated over seeds (mean, sample std and Student-t 95 % confidence interval of the final
// eval loss, of the gap, and of the accuracy and its gap). docs/experiments.md describes
// every column; commands.h turns this into `lossytp summarize`.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lossytp::analysis {

// A problem with the input folder a user can act on (missing folder, no runs, unreadable
// metrics.h5, malformed grid.json). The message names the path; no "error:" prefix.
struct AnalysisError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One run folder, read from its metrics.h5 (and its entry in grid.json, if any).
struct RunRecord {
  std::string id;    // folder name (relative to the grid folder)
  std::string path;  // folder path; empty for a run grid.json lists but that has no metrics.h5
  nlohmann::json config = nlohmann::json::object();  // the `config` attribute, parsed
  std::map<std::string, std::string> params;  // displayed parameter -> value (see Summary)
  std::string net;                            // canonical spec (attribute `net`, else config)
  std::string status;
  std::optional<int64_t> seed, tp, dp;
  std::optional<int64_t> iterations;          // rows of /train/loss
  std::optional<double> final_train_loss;     // mean of the last min(10, n) train losses
  std::optional<double> final_eval_loss;      // last /eval/loss
  std::optional<double> best_eval_loss;       // smallest finite /eval/loss
  std::optional<double> observed_loss_rate, net_stationary_loss_rate, tokens_per_second,
      data_entropy_floor;
  std::optional<double> sim_comm_seconds;     // sum of /train/sim_comm_s
  // Bytes rank 0 put on the wire per iteration (mean over the logged iterations of the sum over
  // /comm/<site>/bytes), split by group: dp = sites "dp.*", pp = "pp.*", the rest TP and CP.
  std::optional<double> tp_bytes_per_iteration, dp_bytes_per_iteration;
  std::optional<double> eval_loss_gap;        // final_eval_loss - the exact twin's
  std::string twin;                           // id of the exact twin the gap was taken against
  // --eval-task runs: last /eval/accuracy and /eval/accuracy_norm, and their differences to the
  // exact twin's (the twin with an accuracy, chosen as for the loss gap)
  std::optional<double> final_accuracy, final_accuracy_norm, accuracy_gap, accuracy_norm_gap;
  // last /divergence/replica_divergence (runs of lossytp with the replica divergence metric)
  std::optional<double> final_replica_divergence;
};

struct Summary {
  std::string dir;
  bool from_grid = false;  // parameters came from DIR/grid.json's `swept`
  // The parameters that vary between runs, besides the fixed columns net, seed, tp and dp:
  // the keys of grid.json's `swept` (tensor-model-parallel-size/tp -> tp,
  // data-parallel-size/dp -> dp), or without grid.json every config key whose value differs
  // between runs except out and threads.
  std::vector<std::string> params;
  std::vector<RunRecord> runs;  // sorted by id
  bool has_accuracy() const;    // some run logged /eval/accuracy: the accuracy columns are written
  bool has_divergence() const;  // some run logged /divergence/replica_divergence: its columns are written
};

// Folders under `dir` holding a metrics.h5: `dir` itself and its direct subfolders (hidden ones
// skipped), sorted by id. Throws AnalysisError when `dir` is missing, not a directory or
// unreadable, or holds no metrics.h5.
std::vector<std::pair<std::string, std::string>> find_run_dirs(const std::string& dir);

// Reads every run of `dir`, fills the columns and pairs each run with its exact twin.
// Throws AnalysisError naming the file when a metrics.h5 or grid.json cannot be read.
Summary summarize_dir(const std::string& dir);

// The pairing rule, exposed for tests: a spec is exact when every model in it is `exact`
// (options such as packet= or transport= allowed), and two runs are twins when their configs
// agree on everything except net, net-only keys (names starting "net-") and the operational
// keys out, threads, log-interval, save-interval, comm-timeout and load.
bool is_exact_spec(const std::string& net);
std::string model_family(const std::string& net);  // "caat:p=0.5+ge:p=.." -> "caat+ge"
std::string twin_key(const nlohmann::json& config);
void compute_gaps(std::vector<RunRecord>& runs);

// Aggregate over seeds: one group per distinct (params..., net, tp, dp).
struct Stat {
  size_t n = 0;
  std::optional<double> mean, std, ci_low, ci_high;  // std and CI need n >= 2
};
Stat describe_sample(const std::vector<double>& xs);  // sample std (n - 1), t_{0.975, n-1} CI

struct SeedGroup {
  std::vector<std::string> key;  // values of Summary::params, then net, tp, dp
  std::vector<std::string> run_ids;
  size_t completed = 0;
  Stat final_eval_loss, eval_loss_gap;
  std::optional<bool> gap_ci_contains_zero;  // empty when fewer than 2 gaps
  std::optional<double> observed_loss_rate_mean;
  std::optional<double> tp_bytes_per_iteration_mean, dp_bytes_per_iteration_mean;
  Stat final_accuracy, accuracy_gap, final_accuracy_norm, accuracy_norm_gap;  // --eval-task runs
  Stat final_replica_divergence;
};
std::vector<std::string> group_columns(const Summary& s);
std::vector<SeedGroup> aggregate_over_seeds(const Summary& s);

// CSV text (RFC 4180 quoting, '\n' line ends, a header row; empty cell = no value).
std::string summary_csv(const Summary& s);
std::string aggregate_csv(const Summary& s, const std::vector<SeedGroup>& groups);
std::string csv_field(const std::string& text);
std::string format_number(double x);          // shortest text that reads back exactly
std::string format_json_value(const nlohmann::json& v);

// Student t: quantile of probability p with `dof` degrees of freedom (from the regularized
// incomplete beta function, inverted by bisection; accurate to ~1e-12).
double student_t_cdf(double t, double dof);
double student_t_quantile(double p, double dof);

}  // namespace lossytp::analysis
