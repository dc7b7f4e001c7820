#include "experiments/run_control.h"

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>

namespace lossytp {

namespace fs = std::filesystem;

namespace {

volatile std::sig_atomic_t g_stop = 0;

extern "C" void on_stop_signal(int sig) {
  if (g_stop != 0) {  // a second signal: stop now, the way the signal's default action would
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop = sig;
}

constexpr const char* kMarkPrefix = ".failed-rank";

}  // namespace

void install_stop_signals() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // a signal must not make a blocking read or MPI call fail
    for (int sig : {SIGTERM, SIGINT, SIGUSR1}) sigaction(sig, &sa, nullptr);
  });
}

int stop_signal() { return g_stop; }

void raise_stop_flag(int sig) { g_stop = sig; }

std::string signal_name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "signal " + std::to_string(sig);
  }
}

void clear_failure_marks(const std::string& run_dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run_dir, ec))
    if (e.path().filename().string().rfind(kMarkPrefix, 0) == 0) fs::remove(e.path(), ec);
}

void mark_failure(const std::string& run_dir, int rank, const std::string& what) {
  try {
    const fs::path p = fs::path(run_dir) / (kMarkPrefix + std::to_string(rank));
    {
      std::ofstream f(p.string() + ".tmp");
      f << what;
    }
    std::error_code ec;
    fs::rename(p.string() + ".tmp", p, ec);  // readers never see half a message
  } catch (...) {
  }
}

std::string peer_failure(const std::string& run_dir, int rank) {
  std::error_code ec;
  std::string best;
  fs::file_time_type best_time;
  for (const auto& e : fs::directory_iterator(run_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(kMarkPrefix, 0) != 0 || name.find('.', 1) != std::string::npos) continue;
    const std::string r = name.substr(std::strlen(kMarkPrefix));
    if (r == std::to_string(rank)) continue;
    const auto t = fs::last_write_time(e.path(), ec);
    if (ec) continue;
    if (!best.empty() && t >= best_time) continue;
    std::ifstream f(e.path());
    std::stringstream ss;
    ss << f.rdbuf();
    best = "rank " + r + " failed: " + ss.str();
    best_time = t;
  }
  return best;
}

std::function<void()> peer_failure_check(const std::string& run_dir, int rank) {
  using Clock = std::chrono::steady_clock;
  auto last = std::make_shared<Clock::time_point>(Clock::now());
  return [run_dir, rank, last] {
    const auto now = Clock::now();
    if (now - *last < std::chrono::milliseconds(100)) return;
    *last = now;
    const std::string why = peer_failure(run_dir, rank);
    if (!why.empty()) throw PeerFailed(why);
  };
}

}  // namespace lossytp
