// sgemm peak of this machine through lossytp's own GEMM entry point (lossytp::cpu::sgemm), the
// ceiling that bench/run.sh holds the trainer's model GFLOP/s against.
//
// Built by bench/CMakeLists.txt as build/bench/bench_sgemm_peak. Run:
//   build/bench/bench_sgemm_peak [--threads N] [--reps R] [--sizes 1024,1536,2048]
// Square row-major C = A @ B (no transposes, beta = 0) for each size; every size is run once as a
// warm-up, then R timed runs. Prints one JSON object on stdout:
//   {"backend": "openblas", "threads": 1, "sizes": [{"n": 1024, "median_gflops": ..,
//    "best_gflops": ..}, ...], "median_gflops": <median over all timed runs of all sizes>,
//    "best_gflops": <best single run>}
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"

namespace cpu = lossytp::cpu;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

std::vector<int> parse_sizes(const char* s) {
  std::vector<int> out;
  std::string str(s);
  size_t pos = 0;
  while (pos < str.size()) {
    size_t comma = str.find(',', pos);
    if (comma == std::string::npos) comma = str.size();
    out.push_back(std::atoi(str.substr(pos, comma - pos).c_str()));
    pos = comma + 1;
  }
  return out;
}

[[noreturn]] void usage() {
  std::fprintf(stderr, "usage: bench_sgemm_peak [--threads N] [--reps R] [--sizes a,b,c]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, reps = 5;
  std::vector<int> sizes = {1024, 1280, 1536, 1792, 2048};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage();
    if (a == "--threads") threads = std::atoi(argv[++i]);
    else if (a == "--reps") reps = std::atoi(argv[++i]);
    else if (a == "--sizes") sizes = parse_sizes(argv[++i]);
    else usage();
  }
  if (threads < 1 || reps < 1 || sizes.empty()) usage();
  cpu::set_num_threads(threads);

  std::vector<double> all;
  std::string per_size;
  for (int n : sizes) {
    if (n <= 0) usage();
    const size_t nn = static_cast<size_t>(n) * n;
    std::vector<float> A(nn), B(nn), C(nn, 0.0f);
    for (size_t i = 0; i < nn; ++i) {
      A[i] = std::sin(0.37f * static_cast<float>(i % 9973)) * 0.5f;
      B[i] = std::cos(0.11f * static_cast<float>(i % 7919)) * 0.5f;
    }
    const double flops = 2.0 * n * static_cast<double>(n) * n;
    cpu::sgemm(false, false, n, n, n, 1.0f, A.data(), n, B.data(), n, 0.0f, C.data(), n);  // warm-up
    std::vector<double> g;
    for (int r = 0; r < reps; ++r) {
      const double t0 = now();
      cpu::sgemm(false, false, n, n, n, 1.0f, A.data(), n, B.data(), n, 0.0f, C.data(), n);
      g.push_back(flops / (now() - t0) / 1e9);
    }
    volatile float sink = C[nn / 2];  // keep the product alive
    (void)sink;
    all.insert(all.end(), g.begin(), g.end());
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s{\"n\": %d, \"median_gflops\": %.2f, \"best_gflops\": %.2f}",
                  per_size.empty() ? "" : ", ", n, median(g), *std::max_element(g.begin(), g.end()));
    per_size += buf;
  }
  std::printf(
      "{\"backend\": \"%s\", \"threads\": %d, \"reps\": %d, \"sizes\": [%s], "
      "\"median_gflops\": %.2f, \"best_gflops\": %.2f}\n",
      cpu::gemm_backend_name(), threads, reps, per_size.c_str(), median(all),
      *std::max_element(all.begin(), all.end()));
  return 0;
}
