// lossytp: the command-line entry point. Verbs: train, grid, summarize, plot, export, net sample.
// Every rank parses the same arguments; an error anywhere before training stops every rank
// cleanly with one message (from the lowest rank that found it) and exit status 2.
#include <mpi.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <thread>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

#include "analysis/commands.h"
#include "experiments/checkpoint.h"
#include "experiments/collective_errors.h"
#include "experiments/dataset.h"
#include "experiments/dry_run.h"
#include "kernels/ops.h"
#include "experiments/grid.h"
#include "experiments/hf_checkpoint.h"
#include "experiments/metrics_file.h"
#include "experiments/run_control.h"
#include "experiments/train_config.h"
#include "experiments/trainer.h"
#include "netmodels/netmodel.h"
#include "netmodels/sample.h"
#include "sim/local_backend.h"

#include <cstdlib>
#include <unistd.h>

using namespace lossytp;

namespace {

int world_rank() { int r = 0; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
int world_size() { int s = 1; MPI_Comm_size(MPI_COMM_WORLD, &s); return s; }

// Ranks of this job on this node.
int ranks_on_node() {
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local = 1;
  MPI_Comm_size(node, &local);
  MPI_Comm_free(&node);
  return local;
}

// Cores divided among the ranks that share this node, at least one each.
int default_threads() {
  const int local = ranks_on_node();
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, cores / std::max(1, local));
}

std::string default_out_dir(const TrainConfig& c) {
  char stamp[32] = {0};
  if (world_rank() == 0) {
    std::time_t t = std::time(nullptr);
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&t));
  }
  MPI_Bcast(stamp, sizeof stamp, MPI_CHAR, 0, MPI_COMM_WORLD);
  return "runs/" + c.model_preset + "-tp" + std::to_string(c.tp) + "-dp" + std::to_string(c.dp) +
         (c.cp > 1 ? "-cp" + std::to_string(c.cp) : "") + (c.pp > 1 ? "-pp" + std::to_string(c.pp) : "") +
         "-" + stamp;
}

// --load DIR: a complete checkpoint whose model and layout are this run's, every rank's file of it
// intact (its checksum verified here, before training): the latest, or else the newest intact
// one, said on stderr.
std::string check_resumable(const TrainConfig& cfg) {
  if (latest_checkpoint(cfg.load) < 0)
    return "--load " + cfg.load + ": no checkpoint there (runs write them with --save-interval N)";
  try {
    const auto saved = nlohmann::json::parse(checkpoint_config(cfg.load));
    const auto now = cfg.to_json();
    // Keys an older checkpoint lacks had the GPT-2 defaults.
    const nlohmann::json gpt2 = {{"group-query-attention", false}, {"normalization", "LayerNorm"},
                                 {"position-embedding-type", "learned_absolute"}, {"attention", "softmax"}, {"attention-pattern", nullptr}, {"use-rope-scaling", false},
                                 {"swiglu", false}, {"disable-bias-linear", false},
                                 {"untie-embeddings-and-output-weights", false},
                                 {"pipeline-model-parallel-size", 1}, {"num-layers-per-virtual-pipeline-stage", 0},
                                 {"context-parallel-size", 1}, {"cp-comm-type", "p2p"}};
    for (const char* k : {"tensor-model-parallel-size", "data-parallel-size", "pipeline-model-parallel-size",
                          "context-parallel-size", "cp-comm-type",
                          "num-layers-per-virtual-pipeline-stage", "vocab-size", "seq-length",
                          "num-layers", "hidden-size", "num-attention-heads", "ffn-hidden-size",
                          "group-query-attention", "num-query-groups", "normalization",
                          "position-embedding-type", "rotary-percent", "use-rope-scaling", "attention", "attention-pattern", "swiglu",
                          "disable-bias-linear", "untie-embeddings-and-output-weights",
                          "padded-vocab-size"})
      if (saved.contains(k) || gpt2.contains(k))
        if (saved.value(k, gpt2.value(k, nlohmann::json())) != now.value(k, gpt2.value(k, nlohmann::json())))
        return "--load " + cfg.load + ": the checkpoint has " + k + " = " + saved.value(k, gpt2.value(k, nlohmann::json())).dump() +
               ", this run " + now.value(k, gpt2.value(k, nlohmann::json())).dump();
    // the optimizer state's layout (experiments/checkpoint.h): whole, or sharded over DP
    const bool saved_zero = saved.value("use-distributed-optimizer", false) &&
                            saved.value("data-parallel-size", 1) * saved.value("context-parallel-size", 1) > 1;
    if (saved_zero != (cfg.use_distributed_optimizer && cfg.dp * cfg.cp > 1))
      return "--load " + cfg.load + ": the checkpoint was written " + (saved_zero ? "with" : "without") +
             " --use-distributed-optimizer (its optimizer state " + (saved_zero ? "sharded over DP" : "whole on every rank") +
             "); resume " + (saved_zero ? "with" : "without") + " it";
  } catch (const std::exception& e) {
    return "--load " + cfg.load + ": cannot read the checkpoint's config.json (" + e.what() + ")";
  }
  const ResumePoint rp = find_resume_point(cfg.load, cfg.tp * cfg.cp * cfg.dp * cfg.pp);
  std::string problems;
  for (const auto& p : rp.problems) problems += (problems.empty() ? "" : "; ") + p;
  if (rp.iteration < 0) return "--load " + cfg.load + ": no intact checkpoint: " + problems;
  if (!rp.problems.empty())
    std::fprintf(stderr, "lossytp: warning: %s; resuming from the checkpoint of iteration %lld, the newest intact one\n",
                 problems.c_str(), static_cast<long long>(rp.iteration));
  for (const auto& w : rp.warnings) std::fprintf(stderr, "lossytp: warning: %s\n", w.c_str());
  return "";
}

// --virtual-ranks N: N threads of this process, each one rank of the run.
int train_virtual(const TrainConfig& cfg, const TokenCorpus& corpus) {
  LocalWorld world(cfg.virtual_ranks, cfg.compute().device);
  std::vector<std::string> errors(cfg.virtual_ranks);
  std::vector<std::string> status(cfg.virtual_ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < cfg.virtual_ranks; ++r)
    threads.emplace_back([&, r] {
      TrainConfig mine = cfg;
      if (r != 0) mine.quiet = true;
      try {
        status[r] = train(mine, corpus, world, r).status;
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < cfg.virtual_ranks; ++r)
    if (!errors[r].empty()) {
      std::fprintf(stderr, "lossytp: virtual rank %d: training failed: %s\n", r, errors[r].c_str());
      return 1;
    }
  return status[0] == "completed" ? 0 : status[0] == "interrupted" ? kExitInterrupted : 3;
}

int cmd_train(TrainOptions& opts) {
  const int node_ranks = ranks_on_node();  // collective: every rank, before anything can fail
  TrainConfig cfg;
  TokenCorpus corpus;
  std::string error;
  try {
    if (opts.cfg.virtual_ranks > 0 && world_size() > 1)
      throw std::invalid_argument("--virtual-ranks runs all ranks in one process: launch it without mpirun (or with -np 1)");
    cfg = finish_train_config(opts, opts.cfg.virtual_ranks > 0 ? opts.cfg.virtual_ranks : world_size());
    if (cfg.dry_run) {  // no data read, nothing large allocated, nothing written
      const nlohmann::json plan = plan_run(cfg);
      if (world_rank() == 0) std::fputs(cfg.json ? (plan.dump(2) + "\n").c_str() : describe_plan(plan).c_str(), stdout);
      return 0;
    }
    corpus = load_corpus(cfg.data);
    reconcile_data(cfg, corpus);
    // A run that cannot fit stops here rather than with std::bad_alloc mid-run.
    const double need = plan_run(cfg)["memory_bytes_per_rank"].get<double>();
    const int here = cfg.virtual_ranks > 0 ? cfg.virtual_ranks : node_ranks;
    error = check_memory(need, here, ops::available_memory(cfg.compute().device), cfg.compute().device);
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (!all_ranks_ok(error)) return 2;
  if (cfg.out.empty()) cfg.out = default_out_dir(cfg);
  if (cfg.threads == 0)
    cfg.threads = cfg.virtual_ranks > 0
                      ? std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / cfg.virtual_ranks)
                      : default_threads();
  if (world_rank() == 0) {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::path metrics = fs::path(cfg.out) / "metrics.h5";
    const bool resuming_here = !cfg.load.empty() && fs::exists(cfg.out, ec) && fs::equivalent(cfg.load, cfg.out, ec);
    if (!cfg.load.empty() && cfg.train_iters == 0 && resuming_here)
      error = "--train-iters 0 evaluates --load " + cfg.load + " into a metrics.h5 of its own: give an --out other than the run's folder";
    else if (!cfg.load.empty()) error = check_resumable(cfg);
    if (error.empty() && resuming_here && fs::exists(metrics, ec)) {
      // the run's metrics.h5 is continued: a damaged one stops the resume before anything starts
      try {
        (void)MetricsFile::load(metrics.string());
      } catch (const std::exception& e) {
        error = damaged_metrics_message(metrics.string(), e.what());
      }
    }
    if (!error.empty()) {
      // nothing is created for a run that cannot start
    } else if (fs::exists(metrics, ec) && !cfg.overwrite && !resuming_here)
      error = "'" + metrics.string() + "' already exists; choose another --out, resume it with --load " + cfg.out + ", or pass --overwrite";
    else if (fs::exists(cfg.out, ec) && !fs::is_directory(cfg.out, ec))
      error = "--out '" + cfg.out + "' exists and is not a directory";
    else {
      fs::create_directories(cfg.out, ec);
      if (ec) error = "cannot create --out '" + cfg.out + "': " + ec.message();
    }
  }
  if (!all_ranks_ok(error)) return 2;

  install_stop_signals();  // from here SIGTERM, SIGINT, SIGUSR1 stop the run with a checkpoint
  if (cfg.virtual_ranks > 0) return train_virtual(cfg, corpus);
  try {
    TrainResult r = train(cfg, corpus, MPI_COMM_WORLD);
    return r.status == "completed" ? 0 : r.status == "interrupted" ? kExitInterrupted : 3;
  } catch (const std::exception& e) {
    // A failure inside training may leave other ranks inside a collective: stop them all.
    std::fprintf(stderr, "lossytp: rank %d: training failed: %s\n", world_rank(), e.what());
    std::fflush(stderr);
    // Rank 0 notices another rank's failure while it waits for it (run_control.h), marks
    // metrics.h5 `failed` and aborts the job: give it the time to.
    if (world_rank() != 0 && cfg.comm_timeout > 0)
      std::this_thread::sleep_for(std::chrono::duration<double>(std::min(cfg.comm_timeout, 30.0)));
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}

struct SampleOptions {
  std::string net;
  size_t packets = 1000000;
  uint64_t seed = 1;
  size_t message_packets = 0;
  bool json = false;
};

int cmd_net_sample(const SampleOptions& o) {
  if (world_rank() != 0) return 0;
  try {
    if (o.packets == 0) throw std::invalid_argument("--packets must be >= 1");
    const net::NetSpec spec = net::parse_net_spec(o.net);
    // a model with a state= option (GE): the given state and the other one, both against theory
    const auto s = net::sample_link_states(spec, o.packets, o.seed, o.message_packets);
    std::fputs(net::format_samples(s, o.json).c_str(), stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lossytp: error: %s\n", e.what());
    return 2;
  }
}

// OpenMP's default spin-waiting fights OpenBLAS's threads for the cores (a 2-thread step runs
// up to 3x slower). libgomp reads OMP_WAIT_POLICY when it loads, before main, so when the user
// has not chosen a policy we set it and re-execute ourselves once, before MPI starts.
void ensure_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run with the default policy
}

}  // namespace

int main(int argc, char** argv) {
  ensure_passive_omp_wait(argv);
  MPI_Init(&argc, &argv);
  const bool root = world_rank() == 0;
  int rc = 0;
  {
    CLI::App app{"lossytp: tensor-parallel transformer training over lossy networks", "lossytp"};
    app.set_version_flag("--version", std::string("lossytp ") + LOSSYTP_VERSION);
    app.require_subcommand(1);
    CLI::App* train_cmd = app.add_subcommand("train", "train one model (launch with mpirun -np tp*dp)");
    TrainOptions train_opts;
    add_train_options(*train_cmd, train_opts);
    CLI::App* grid_cmd = app.add_subcommand(
        "grid", "run a grid of trainings from a TOML file (launch with mpirun; docs/experiments.md)");
    GridOptions grid_opts;
    grid_cmd->add_option("file", grid_opts.file, "grid file: [base], [sweep], [[runs]]")->required();
    grid_cmd->add_option("--out", grid_opts.out, "results folder (one sub-folder per run, grid.json)")->required();
    grid_cmd->add_flag("--force", grid_opts.force, "run a changed grid file in a folder made by an older version of it");
    grid_cmd->add_flag("--verbose", grid_opts.verbose, "a progress line of every run at every log interval");
    grid_cmd->add_flag("--dry-run", grid_opts.dry_run,
                       "check every run and list them (id, layout, ranks, status, time estimate); train and write nothing");
    grid_cmd->add_option("--virtual-ranks", grid_opts.virtual_ranks,
                         "run the grid in this one process with N ranks as threads (no mpirun)");
    std::string an_dir, an_out;
    bool an_quiet = false;
    CLI::App* sum_cmd = app.add_subcommand(
        "summarize", "one CSV row per run, and one per configuration aggregated over seeds");
    sum_cmd->add_option("DIR", an_dir, "folder of runs (a grid's --out, or one run's folder)")->required();
    sum_cmd->add_option("-o,--output", an_out, "summary CSV (default DIR/summary.csv; the aggregate goes next to it)");
    sum_cmd->add_flag("--quiet", an_quiet, "print nothing but errors");
    CLI::App* plot_cmd = app.add_subcommand("plot", "PNG plots of a folder of runs (matplotlib)");
    plot_cmd->add_option("DIR", an_dir, "folder of runs")->required();
    plot_cmd->add_option("-o,--output", an_out, "folder for the PNGs (default DIR/plots)");
    plot_cmd->add_flag("--quiet", an_quiet, "print nothing but errors");
    CLI::App* net_cmd = app.add_subcommand("net", "inspect network models");
    net_cmd->require_subcommand(1);
    CLI::App* sample_cmd = net_cmd->add_subcommand(
        "sample", "draw packets on one link and compare the loss statistics with theory");
    SampleOptions sample_opts;
    sample_cmd->add_option("--net", sample_opts.net, "network model spec (docs/netmodels.md)")->required();
    sample_cmd->add_option("--packets", sample_opts.packets, "packets to draw")->capture_default_str();
    sample_cmd->add_option("--seed", sample_opts.seed, "seed (a seed= in the spec wins)")->capture_default_str();
    sample_cmd->add_option("--message-packets", sample_opts.message_packets,
                           "packets per message (0: one message, or 1024 for step=message)")
        ->capture_default_str();
    sample_cmd->add_flag("--json", sample_opts.json, "print one JSON object");

    CLI::App* export_cmd = app.add_subcommand(
        "export", "merge a run's latest checkpoint into a Hugging Face model folder (docs/finetuning.md)");
    std::string export_load, export_hf, export_dtype = "fp32";
    bool export_overwrite = false, export_quiet = false;
    export_cmd->add_option("--load", export_load, "the run's folder (its checkpoint/ is read)")->required();
    export_cmd->add_option("--hf", export_hf, "output folder: config.json, model.safetensors")->required();
    export_cmd->add_option("--dtype", export_dtype, "fp32 or bf16")->capture_default_str()
        ->check(CLI::IsMember({"fp32", "bf16"}));
    export_cmd->add_flag("--overwrite", export_overwrite, "replace a model already in --hf");
    export_cmd->add_flag("--quiet", export_quiet, "print nothing but errors");

    std::vector<std::string> args(argv + 1, argv + argc);
    std::string error;
    bool parsed = false;
    try {
      if (!args.empty() && args[0] == "train")
        args = [&] {
          std::vector<std::string> rest(args.begin() + 1, args.end());
          rest = expand_config_file(rest, *train_cmd);
          rest.insert(rest.begin(), "train");
          return rest;
        }();
      std::vector<std::string> rev(args.rbegin(), args.rend());  // CLI11 parses a reversed vector
      app.parse(rev);
      parsed = true;
    } catch (const CLI::CallForHelp& e) {
      if (root) app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
      if (root) app.exit(e);
    } catch (const CLI::CallForVersion& e) {
      if (root) app.exit(e);
    } catch (const CLI::ParseError& e) {
      error = e.what();
      if (error.empty()) error = "bad command line";
      rc = 2;
    } catch (const std::exception& e) {
      error = e.what();
      rc = 2;
    }
    if (!parsed && rc == 0) {
      // help or version: done
    } else if (!all_ranks_ok(error)) {
      if (root) std::fprintf(stderr, "run 'lossytp --help' or 'lossytp train --help' for the options\n");
      rc = 2;
    } else if (train_cmd->parsed()) {
      rc = cmd_train(train_opts);
    } else if (sum_cmd->parsed() || plot_cmd->parsed()) {
      // one process does the analysis; the others wait for its verdict
      int status = 0;
      if (root) status = sum_cmd->parsed() ? run_summarize(an_dir, an_out, an_quiet)
                                           : run_plot(an_dir, an_out, an_quiet);
      MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
      rc = status;
    } else if (grid_cmd->parsed()) {
      rc = run_grid(grid_opts);
    } else if (export_cmd->parsed()) {
      int status = 0;
      if (root) {
        try {
          hf::export_run(export_load, export_hf, export_dtype == "bf16" ? hf::ExportDType::BF16 : hf::ExportDType::F32,
                         export_overwrite, export_quiet);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "lossytp: error: %s\n", e.what());
          status = 2;
        }
      }
      MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
      rc = status;
    } else if (sample_cmd->parsed()) {
      rc = cmd_net_sample(sample_opts);
    }
  }
  MPI_Finalize();
  return rc;
}
