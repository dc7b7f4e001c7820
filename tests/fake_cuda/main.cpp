// main() of the fake_cuda test: tests/gpu/test_cuda_model.cpp, test_cuda_paths.cpp and
// test_cuda_comm.cpp (minus NCCL) run over fake_cuda.cpp's host-memory stand-in for kernels/cuda, on a machine
// without a GPU. As tests/gpu's main(), with MPI initialised, but never skipped. Catch's own
// signal handlers are off so fake_cuda.cpp's SIGSEGV handler names a host dereference of device
// memory. Afterwards: how often each device function ran, and no device allocation may be left.
#define CATCH_CONFIG_RUNNER
#define CATCH_CONFIG_NO_POSIX_SIGNALS
#include <catch2/catch.hpp>

#include <mpi.h>

#include <cstdio>

#include "kernels/cuda/ops.h"
#include "tests/fake_cuda/fake_cuda.h"

using namespace lossytp;

int main(int argc, char** argv) {
  std::printf("GPU: %s (checks device-pointer provenance and control flow, not CUDA kernels)\n",
              cuda::device_name().c_str());
  MPI_Init(&argc, &argv);
  int rc = Catch::Session().run(argc, argv);
  MPI_Finalize();
  const fake_cuda::Stats s = fake_cuda::stats();
  std::printf("fake-cuda: %zu allocations (peak %.1f MiB live), %zu freed; device memory %s outside "
              "device functions\n",
              s.allocs, s.peak_bytes / 1048576.0, s.frees,
              s.protect ? "was PROT_NONE" : "was NOT protected (LOSSYTP_FAKE_CUDA_PROTECT=0)");
  std::printf("fake-cuda: calls:");
  for (const auto& [fn, n] : s.calls) std::printf(" %s %zu,", fn.c_str(), n);
  std::printf("\n");
  if (s.live != 0) {
    std::fprintf(stderr, "fake-cuda: %zu device allocations (%zu bytes) were never freed\n", s.live,
                 s.live_bytes);
    if (rc == 0) rc = 1;
  }
  return rc;
}
