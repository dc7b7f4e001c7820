// The fake CUDA's own test: each misuse it is meant to catch runs in a forked child, which must
// die of SIGABRT with the expected message on stderr; the correct uses next to them must not.
// Without this, a check that never fires would pass the fake_cuda test silently.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/ops.h"
#include "kernels/ops.h"
#include "sim/tensor.h"

using namespace lossytp;

namespace {

// Runs body in a child; returns its stderr, and whether it aborted.
std::string in_child(const std::function<void()>& body, bool& aborted) {
  int fds[2];
  if (pipe(fds) != 0) return "pipe failed";
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    body();
    std::fflush(nullptr);
    _exit(0);
  }
  close(fds[1]);
  std::string err;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) err.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  return err;
}

int failures = 0;

void expect_abort(const char* name, const std::function<void()>& body, const char* message) {
  bool aborted = false;
  const std::string err = in_child(body, aborted);
  const bool ok = aborted && err.find(message) != std::string::npos;
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", name);
  if (!ok) {
    std::printf("  expected an abort saying \"%s\"; got %s, stderr:\n%s\n", message,
                aborted ? "an abort" : "no abort", err.c_str());
    ++failures;
  }
}

void expect_fine(const char* name, const std::function<void()>& body) {
  bool aborted = false;
  const std::string err = in_child(body, aborted);
  const bool ok = !aborted && err.find("fake-cuda") == std::string::npos;
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", name);
  if (!ok) {
    std::printf("  expected no complaint; stderr:\n%s\n", err.c_str());
    ++failures;
  }
}

float* dev_floats(size_t n) { return static_cast<float*>(cuda::alloc(n * sizeof(float))); }

}  // namespace

int main() {
  std::vector<float> host(64, 1.0f);

  expect_fine("correct uses", [&] {
    float* d = dev_floats(64);
    cuda::to_device(d, host.data(), 64 * sizeof(float));
    cuda::scale_inplace(d, 2.0f, 64);
    ops::add_inplace(Device::CUDA, d, d, 64);
    cuda::copy_bytes(host.data(), d, 64 * sizeof(float));  // cudaMemcpyDefault: either side
    cuda::to_host(host.data(), d + 32, 32 * sizeof(float));  // an interior range
    if (host[0] != 4.0f || cuda::sum(d, 64) != 256.0) std::abort();
    Tensor t({8, 8}, Device::CUDA);
    t.copy_from_host(host.data());
    Tensor c = t.to(Device::CPU);
    if (c.data()[63] != 4.0f) std::abort();
    cuda::free(d);
  });
  expect_abort("a host pointer to a kernel", [&] { cuda::fill(host.data(), 0.0f, 64); },
               "cuda::fill: argument 'x' = ");
  expect_abort("a host pointer through kernels/ops.h", [&] { ops::scale_inplace(Device::CUDA, host.data(), 2.0f, 64); },
               "must be device memory, but is host memory");
  expect_abort("device memory as to_device's source", [&] {
    float* a = dev_floats(64);
    float* b = dev_floats(64);
    cuda::to_device(a, b, 64 * sizeof(float));
  }, "cuda::to_device: argument 'src'");
  expect_abort("a range past the allocation's end", [&] {
    float* a = dev_floats(64);
    cuda::add_inplace(a + 1, a, 64);
  }, "bytes past its end");
  expect_abort("a freed buffer", [&] {
    float* a = dev_floats(64);
    cuda::free(a);
    cuda::fill(a, 0.0f, 64);
  }, "use after free");
  expect_abort("a double free", [&] {
    float* a = dev_floats(64);
    cuda::free(a);
    cuda::free(a);
  }, "double free");
  expect_abort("host code reading device memory", [&] {
    float* a = dev_floats(64);
    std::printf("%f\n", static_cast<double>(a[3]));
  }, "host code dereferenced fake device memory");
  expect_abort("host code writing a device tensor", [&] {
    Tensor t({4}, Device::CUDA);
    t.data()[0] = 1.0f;
  }, "host code dereferenced fake device memory");
  expect_abort("a null pointer the real kernel writes", [&] {
    float* a = dev_floats(64);
    cuda::matmul_backward(nullptr, nullptr, nullptr, a, a, a, 4, 4, 4);
  }, "argument 'dweight'");
  return failures == 0 ? 0 : 1;
}
