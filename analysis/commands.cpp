// `lossytp summarize` and `lossytp plot` (see commands.h for the flags and exit statuses).
#include "analysis/commands.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <vector>

#include "analysis/plot_script.h"
#include "analysis/summary.h"

extern char** environ;

namespace lossytp::analysis {

namespace fs = std::filesystem;

namespace {

int input_error(const std::string& message) {
  std::fprintf(stderr, "lossytp: error: %s\n", message.c_str());
  std::fflush(stderr);
  return 2;
}

// Writes `text` to "<path>.tmp.<pid>" in the same folder; rename_into() moves it into place.
std::string write_temp(const fs::path& path, const std::string& text) {
  const std::string tmp = path.string() + ".tmp." + std::to_string(::getpid());
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  if (out) out << text;
  if (out) out.close();
  if (!out || out.fail()) {
    const std::string why = std::strerror(errno ? errno : EIO);
    std::error_code ec;
    fs::remove(tmp, ec);
    throw AnalysisError("cannot write '" + path.string() + "': " + why);
  }
  return tmp;
}

void prepare_output_file(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw AnalysisError("output '" + path.string() + "' is a directory");
  const fs::path parent = path.parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec)) {
    fs::create_directories(parent, ec);
    if (ec) throw AnalysisError("cannot create folder '" + parent.string() + "': " + ec.message());
  }
}

std::string fixed(double x, int digits = 4) {
  if (!std::isfinite(x)) return format_number(x);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

std::string signed_fixed(double x) {
  std::string s = fixed(x);
  if (x >= 0) s.insert(s.begin(), '+');
  return s;
}

// A few lines for the terminal: one per configuration of the aggregate.
void print_table(const Summary& s, const std::vector<SeedGroup>& groups) {
  size_t completed = 0;
  for (const auto& r : s.runs) completed += r.status == "completed";
  std::printf("%zu run%s (%zu completed) in %s\n", s.runs.size(), s.runs.size() == 1 ? "" : "s",
              completed, s.dir.c_str());
  // Label: the net, then the other group keys that differ between groups.
  const std::vector<std::string> cols = group_columns(s);
  const size_t net_col = cols.size() - 3;
  std::vector<std::string> labels;
  for (const auto& g : groups) {
    std::string label = g.key[net_col];
    for (size_t c = 0; c < cols.size(); ++c) {
      if (c == net_col) continue;
      std::set<std::string> values;
      for (const auto& h : groups) values.insert(h.key[c]);
      if (values.size() > 1) label += " " + cols[c] + "=" + g.key[c];
    }
    labels.push_back(label);
  }
  size_t width = 6;
  for (const auto& l : labels) width = std::max(width, l.size());
  const bool acc = s.has_accuracy();
  std::printf("  %-*s  %-9s  %-26s  %-28s%s\n", static_cast<int>(width), "config", "completed",
              "final eval loss (± 95% CI)", "gap vs exact twin [95% CI]",
              acc ? "  accuracy (± 95% CI), gap vs exact twin" : "");
  for (size_t i = 0; i < groups.size(); ++i) {
    const SeedGroup& g = groups[i];
    const std::string runs = std::to_string(g.completed) + "/" + std::to_string(g.run_ids.size());
    std::string eval = "-";
    if (g.final_eval_loss.mean) {
      eval = fixed(*g.final_eval_loss.mean);
      if (g.final_eval_loss.ci_high)
        eval += " ± " + fixed(*g.final_eval_loss.ci_high - *g.final_eval_loss.mean);
    }
    std::string gap = "-";
    if (g.eval_loss_gap.mean) {
      gap = signed_fixed(*g.eval_loss_gap.mean);
      if (g.eval_loss_gap.ci_low)
        gap += " [" + signed_fixed(*g.eval_loss_gap.ci_low) + ", " +
               signed_fixed(*g.eval_loss_gap.ci_high) + "]";
    }
    std::string accuracy;
    if (acc) {
      accuracy = "  -";
      if (g.final_accuracy.mean) {
        accuracy = "  " + fixed(*g.final_accuracy.mean);
        if (g.final_accuracy.ci_high) accuracy += " ± " + fixed(*g.final_accuracy.ci_high - *g.final_accuracy.mean);
        if (g.accuracy_gap.mean) accuracy += ", " + signed_fixed(*g.accuracy_gap.mean);
      }
    }
    std::printf("  %-*s  %-9s  %-26s  %-28s%s\n", static_cast<int>(width), labels[i].c_str(),
                runs.c_str(), eval.c_str(), gap.c_str(), accuracy.c_str());
  }
}

// ---------------------------------------------------------------------------------------------
// Running the plotting script

struct ProcessResult {
  int spawn_error = 0;  // errno when the program could not be started
  int status = 0;       // waitpid status
  std::string out, err;
};

std::string read_all(int fd) {
  std::string text;
  char buf[65536];
  ::lseek(fd, 0, SEEK_SET);
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  return text;
}

int temp_file(std::string& name, const char* pattern, int suffix_len) {
  std::string t = (fs::temp_directory_path() / pattern).string();
  std::vector<char> buf(t.begin(), t.end());
  buf.push_back('\0');
  const int fd = ::mkstemps(buf.data(), suffix_len);
  if (fd < 0) throw std::runtime_error(std::string("cannot create a temporary file: ") +
                                       std::strerror(errno));
  name = buf.data();
  return fd;
}

// Runs `program` (searched on PATH when it has no '/') with `args`, its stdout and stderr
// captured through temporary files. posix_spawn, not fork: safe after MPI_Init.
ProcessResult run_process(const std::string& program, const std::vector<std::string>& args) {
  ProcessResult r;
  std::string out_name, err_name;
  const int out_fd = temp_file(out_name, "lossytp-plot-out-XXXXXX", 0);
  const int err_fd = temp_file(err_name, "lossytp-plot-err-XXXXXX", 0);
  ::unlink(out_name.c_str());
  ::unlink(err_name.c_str());
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_fd, STDERR_FILENO);
  std::vector<std::string> argv_s = {program};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const bool search = program.find('/') == std::string::npos;
  const int rc = search ? posix_spawnp(&pid, program.c_str(), &actions, nullptr, argv.data(), environ)
                        : posix_spawn(&pid, program.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    r.spawn_error = rc;
  } else {
    while (::waitpid(pid, &r.status, 0) < 0 && errno == EINTR) {
    }
    r.out = read_all(out_fd);
    r.err = read_all(err_fd);
  }
  ::close(out_fd);
  ::close(err_fd);
  return r;
}

std::string choose_python() {
  if (const char* env = std::getenv("LOSSYTP_PYTHON"); env && *env) return env;
  if (::access("/usr/bin/python3", X_OK) == 0) return "/usr/bin/python3";
  return "python3";
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

std::string over_seeds_path(const std::string& summary_csv) {
  const fs::path p(summary_csv);
  return (p.parent_path() / (p.stem().string() + "_over_seeds" + p.extension().string())).string();
}

int run_summarize(const std::string& dir, const std::string& out_csv, bool quiet) {
  try {
    const Summary s = summarize_dir(dir);
    const std::vector<SeedGroup> groups = aggregate_over_seeds(s);
    const fs::path out = out_csv.empty() ? fs::path(dir) / "summary.csv" : fs::path(out_csv);
    const fs::path agg = over_seeds_path(out.string());
    prepare_output_file(out);
    prepare_output_file(agg);
    // Both files are complete under temporary names before either replaces anything.
    const std::string tmp_out = write_temp(out, summary_csv(s));
    std::string tmp_agg;
    try {
      tmp_agg = write_temp(agg, aggregate_csv(s, groups));
    } catch (...) {
      std::error_code ec;
      fs::remove(tmp_out, ec);
      throw;
    }
    for (const auto& [tmp, dst] : {std::pair{tmp_out, out}, std::pair{tmp_agg, agg}}) {
      std::error_code ec;
      fs::rename(tmp, dst, ec);
      if (ec) {
        std::error_code ignore;
        fs::remove(tmp_out, ignore);
        fs::remove(tmp_agg, ignore);
        throw AnalysisError("cannot write '" + dst.string() + "': " + ec.message());
      }
    }
    if (!quiet) {
      print_table(s, groups);
      std::printf("wrote %s\nwrote %s\n", out.string().c_str(), agg.string().c_str());
      std::fflush(stdout);
    }
    return 0;
  } catch (const std::exception& e) {
    return input_error(e.what());
  }
}

int run_plot(const std::string& dir, const std::string& out_dir, bool quiet) {
  const fs::path out = out_dir.empty() ? fs::path(dir) / "plots" : fs::path(out_dir);
  try {
    (void)summarize_dir(dir);  // the same checks and messages as summarize
    std::error_code ec;
    if (fs::exists(out, ec) && !fs::is_directory(out, ec))
      throw AnalysisError("output '" + out.string() + "' exists and is not a directory");
    fs::create_directories(out, ec);
    if (ec) throw AnalysisError("cannot create folder '" + out.string() + "': " + ec.message());
  } catch (const std::exception& e) {
    return input_error(e.what());
  }

  std::string script;
  ProcessResult r;
  const std::string python = choose_python();
  try {
    const int fd = temp_file(script, "lossytp-plot-XXXXXX.py", 3);
    const std::string_view text = plot_script();
    size_t done = 0;
    while (done < text.size()) {
      const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
      if (n <= 0) {
        ::close(fd);
        throw std::runtime_error(std::string("cannot write the plotting script: ") +
                                 std::strerror(errno));
      }
      done += static_cast<size_t>(n);
    }
    ::close(fd);
    r = run_process(python, {script, dir, out.string()});
  } catch (const std::exception& e) {
    if (!script.empty()) ::unlink(script.c_str());
    std::fprintf(stderr, "lossytp: error: %s\n", e.what());
    return 1;
  }
  ::unlink(script.c_str());

  if (r.spawn_error) {
    std::fprintf(stderr,
                 "lossytp: error: cannot run Python ('%s': %s); plotting needs python3 with "
                 "numpy, h5py and matplotlib: install them with scripts/install-deps.sh\n",
                 python.c_str(), std::strerror(r.spawn_error));
    return 1;
  }
  if (WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) {
    if (!quiet) {
      std::fputs(r.out.c_str(), stdout);
      std::fflush(stdout);
    }
    return 0;
  }
  if (WIFEXITED(r.status) && WEXITSTATUS(r.status) == 3) {  // the script's missing-module exit
    std::fprintf(stderr, "lossytp: error: cannot plot: %s\n",
                 trim(r.err).c_str());
    return 1;
  }
  if (WIFEXITED(r.status) && WEXITSTATUS(r.status) == 2) {  // bad input found by the script
    std::string msg = trim(r.err);
    if (msg.rfind("error: ", 0) == 0) msg = msg.substr(7);
    return input_error(msg);
  }
  const std::string how = WIFSIGNALED(r.status)
                              ? "was killed by signal " + std::to_string(WTERMSIG(r.status))
                              : "exited with status " + std::to_string(WEXITSTATUS(r.status));
  std::fprintf(stderr, "lossytp: error: the plotting script (%s) %s; its output:\n%s\n",
               python.c_str(), how.c_str(), trim(r.err).c_str());
  return 1;
}

}  // namespace lossytp::analysis
