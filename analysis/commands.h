// The analysis verbs of the CLI. Both read a folder of runs: DIR/<run-id>/metrics.h5 for every
// direct subfolder that has one (hidden folders skipped), or DIR itself when it is one run's
// folder; DIR/grid.json, when present, names the swept parameters (docs/experiments.md).
//
//   lossytp summarize DIR [-o summary.csv] [--quiet]
//     Writes one row per run to DIR/summary.csv (or -o PATH) and one row per configuration,
//     aggregated over seeds, next to it: DIR/summary_over_seeds.csv (for -o X.csv: X_over_seeds.csv).
//     Both files are written to a temporary name and renamed; nothing else in DIR is touched.
//     Prints a short table of the aggregate and the paths written unless --quiet.
//
//   lossytp plot DIR [-o PLOTDIR] [--quiet]
//     Writes loss_curves.png, gap_vs_loss_rate.png and (when a run uses transport=reliable)
//     time_to_target.png into DIR/plots/ (or -o PLOTDIR, created if missing) by running the
//     embedded analysis/plot.py with /usr/bin/python3 (else python3 on PATH; the environment
//     variable LOSSYTP_PYTHON overrides both). Needs numpy, h5py and matplotlib
//     (scripts/install-deps.sh). Prints the PNG paths written unless --quiet.
//
// Exit status: 0 ok; 2 bad input (DIR missing, not a directory or unreadable, no metrics.h5 in
// it, a metrics.h5 or grid.json that cannot be read, an output path that cannot be written),
// with one line "lossytp: error: ..." on stderr naming the problem; 1 the plotting script
// failed or Python/its modules are missing (the script's stderr is shown after the message).
//
// Neither function touches MPI: call them on one rank only (rank 0) when lossytp runs under
// mpirun. Wiring with CLI11, e.g.:
//   auto* sum = app.add_subcommand("summarize", "one CSV row per run, and per config over seeds");
//   sum->add_option("DIR", dir, "folder of runs")->required();
//   sum->add_option("-o,--output", out, "summary CSV (default DIR/summary.csv)");
//   sum->add_flag("--quiet", quiet, "print nothing but errors");
#pragma once
#include <string>

namespace lossytp::analysis {

// out_csv empty: DIR/summary.csv. Returns the exit status.
int run_summarize(const std::string& dir, const std::string& out_csv, bool quiet);

// out_dir empty: DIR/plots. Returns the exit status.
int run_plot(const std::string& dir, const std::string& out_dir, bool quiet);

// The aggregate's path for a summary path: "a/summary.csv" -> "a/summary_over_seeds.csv".
std::string over_seeds_path(const std::string& summary_csv);

}  // namespace lossytp::analysis

// The brief's names, at namespace lossytp level, for the CLI.
namespace lossytp {
using analysis::run_plot;
using analysis::run_summarize;
}  // namespace lossytp
