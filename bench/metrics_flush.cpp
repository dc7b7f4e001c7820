// The cost of one metrics.h5 flush as the file grows: a writer with a run's series (train,
// eval, comm per site) appends `--interval` rows per flush up to `--rows` rows and prints the
// median flush time of each window of flushes, with the file's size then. An incremental
// writer shows flat times; one that rewrites the file shows times growing with it.
//   bench_metrics_flush [--rows 50000] [--interval 10] [--sites 13] [--dir /tmp]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "experiments/metrics_file.h"

using namespace lossytp;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  long rows = 50000, interval = 10, sites = 13;
  std::string dir = fs::temp_directory_path().string();
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--rows")) rows = std::atol(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--interval")) interval = std::atol(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--sites")) sites = std::atol(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  const fs::path work = fs::path(dir) / ("bench_metrics_flush_" + std::to_string(::getpid()));
  fs::create_directories(work);
  const std::string path = (work / "metrics.h5").string();
  using Clock = std::chrono::steady_clock;
  std::vector<double> ms;   // every flush's time
  std::vector<long> at;     // rows after it
  std::vector<double> mb;   // the file's size after it
  {
    MetricsFile m(path);
    m.set_attr("status", std::string("running"));
    m.set_attr("config", std::string(2000, 'x'));
    const char* counters[] = {"calls", "messages", "bytes", "packets", "packets_exposed",
                              "packets_lost", "retransmissions", "elements_filled"};
    for (long it = 1; it <= rows; ++it) {
      for (const char* s : {"loss", "lr", "grad_norm", "step_time_s", "sim_comm_s"})
        m.append(std::string("train/") + s, 1.0 / it);
      m.append("train/iteration", it);
      m.append("comm/iteration", it);
      for (long s = 0; s < sites; ++s) {
        const std::string base = "comm/site" + std::to_string(s) + "/";
        for (const char* c : counters) m.append_int(base + c, it);
        m.append(base + "sim_seconds", 1e-6 * it);
      }
      if (it % 500 == 0) {
        m.append("eval/iteration", it);
        m.append("eval/loss", 2.0);
      }
      if (it % interval == 0) {
        m.set_attr("tokens_per_second", 1000.0 + it);
        const auto t0 = Clock::now();
        m.flush();
        ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        at.push_back(it);
        mb.push_back(static_cast<double>(fs::file_size(path)) / 1e6);
      }
    }
  }
  const size_t n_series = 7 + 9 * static_cast<size_t>(sites) + 2;
  std::printf("metrics.h5 flush: %zu series, %ld rows per flush, %zu flushes\n", n_series, interval,
              ms.size());
  std::printf("%12s %12s %14s %14s\n", "rows", "file MB", "median ms", "p90 ms");
  const size_t windows = 10, per = std::max<size_t>(1, ms.size() / windows);
  for (size_t w = 0; w * per < ms.size(); ++w) {
    std::vector<double> v(ms.begin() + w * per, ms.begin() + std::min(ms.size(), (w + 1) * per));
    std::sort(v.begin(), v.end());
    const size_t last = std::min(ms.size(), (w + 1) * per) - 1;
    std::printf("%12ld %12.1f %14.3f %14.3f\n", at[last], mb[last], v[v.size() / 2],
                v[v.size() * 9 / 10]);
  }
  fs::remove_all(work);
  return 0;
}
