// A host-memory stand-in for the whole of kernels/cuda/ops.h (runtime, kernels, bf16 GEMMs and
// attention, network masks), linked instead of the real kernels/cuda into a copy of the core built with
// LOSSYTP_HAVE_CUDA (tests/CMakeLists.txt, target lossytp_fake_cuda_tests). It runs the GPU code
// path of the model, trainer and comm layer on a machine without a GPU and checks its
// device-pointer discipline:
//  - "device" memory comes from cuda::alloc only: page-aligned blocks of one reserved address
//    range (the arena), zero-filled, registered as [ptr, ptr + bytes);
//  - every pointer a kernel or runtime function documents as a device pointer must lie, with
//    the extent the function reads or writes, inside ONE live allocation (not host memory, not
//    a freed block, not past the end); the host side of to_device/to_host must not be device
//    memory; copy_bytes (cudaMemcpyDefault) takes either, but device ranges must be whole.
//    Pointers the real kernels always dereference must not be null where the CPU twin would
//    accept null (cuda::matmul_backward's dweight, LayerNorm's mean/rstd/gradients);
//  - outside these functions the arena is PROT_NONE, so host code that dereferences a device
//    pointer (a crash or garbage on a GPU) faults here, and the SIGSEGV handler says so;
//  - freed blocks are quarantined for a while before their addresses are reused, so a late
//    use of a freed buffer is reported as such.
// A violation prints the function, the argument, what the pointer is, a backtrace, and aborts.
// The kernels delegate to their CPU twins (kernels/cpu/ops.h, same layouts and conventions),
// the packet masks to the per-packet functions of kernels/packet_rng.h that the CUDA kernels run
// (iid_packet_lost, ge_packet_loss_reference), apply_delivery to the body of
// kernels/cuda/network.cu's kernel; sum/sum_squares reduce in double.
//
// What this does NOT check: the CUDA kernels themselves (tests/gpu on a real GPU does), stream
// ordering and asynchrony (everything here runs synchronously, so a missing synchronize() or a
// host buffer reused before an asynchronous copy finished goes unnoticed), multi-GPU placement
// (one fake device), NCCL (not built), and device-memory dereferences by host code while another
// thread is inside a fake function (the arena is readable then: virtual ranks run concurrently).
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cxxabi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "kernels/bf16.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"
#include "kernels/packet_rng.h"
#include "tests/fake_cuda/fake_cuda.h"

namespace {

constexpr size_t kQuarantineBytes = size_t{64} << 20;  // freed address space kept out of reuse
constexpr size_t kQuarantineBlocks = 2048;

struct Block {
  size_t bytes = 0;  // as requested
  size_t cap = 0;    // page-rounded
  bool live = false;
};

struct Arena {
  std::mutex mu;
  char* base = nullptr;
  size_t reserve = 0, top = 0, page = 4096;
  bool protect = true;
  int active = 0;  // fake calls in flight (the arena is readable while > 0)
  std::map<uintptr_t, Block> blocks;  // start -> block: live ones, and freed ones until reused
  std::deque<uintptr_t> quarantine;
  size_t quarantine_bytes = 0;
  std::multimap<size_t, uintptr_t> pool;  // reusable freed blocks by capacity
  lossytp::fake_cuda::Stats st;
  std::map<const char*, size_t> calls;
  struct sigaction old_segv {};
};

Arena* g_arena = nullptr;  // for the signal handler

void print_backtrace() {
  void* frames[48];
  const int n = backtrace(frames, 48);
  for (int i = 1; i < n; ++i) {
    Dl_info info{};
    const char* name = nullptr;
    char* demangled = nullptr;
    if (dladdr(frames[i], &info) && info.dli_sname) {
      int status = 0;
      demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
      name = status == 0 && demangled ? demangled : info.dli_sname;
    }
    std::fprintf(stderr, "  #%-2d %p %s\n", i, frames[i], name ? name : "?");
    std::free(demangled);
  }
}

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "\nfake-cuda: %s\nbacktrace (link with -rdynamic for names):\n", msg.c_str());
  print_backtrace();
  std::fflush(stderr);
  std::abort();
}

std::string hex(const void* p) {
  char b[32];
  std::snprintf(b, sizeof b, "%p", p);
  return b;
}

void on_segv(int sig, siginfo_t* si, void* ctx) {
  const Arena* a = g_arena;
  const char* addr = static_cast<const char*>(si->si_addr);
  if (a && addr >= a->base && addr < a->base + a->reserve) {
    char msg[320];
    std::snprintf(msg, sizeof msg,
                  "\nfake-cuda: host code dereferenced fake device memory at %p (outside every "
                  "kernels/cuda function: on a GPU this reads garbage or crashes)\nbacktrace:\n",
                  si->si_addr);
    if (write(2, msg, std::strlen(msg)) < 0) {}
    print_backtrace();
    signal(SIGABRT, SIG_DFL);
    std::abort();
  }
  // Not ours: the previous handler takes the fault when it repeats.
  sigaction(SIGSEGV, &g_arena->old_segv, nullptr);
  (void)sig;
  (void)ctx;
}

Arena& arena() {
  static Arena* a = [] {
    auto* r = new Arena;  // never destroyed: static tensors may free after main()
    r->page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const char* env = std::getenv("LOSSYTP_FAKE_CUDA_PROTECT");
    r->protect = !(env && std::strcmp(env, "0") == 0);
    for (size_t gib : {1024, 256, 64, 16}) {
      r->reserve = size_t{gib} << 30;
      void* p = mmap(nullptr, r->reserve, r->protect ? PROT_NONE : PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p != MAP_FAILED) {
        r->base = static_cast<char*>(p);
        break;
      }
    }
    if (!r->base) die("cannot reserve an address range for the fake device memory");
    r->st.protect = r->protect;
    g_arena = r;
    if (r->protect) {
      struct sigaction sa {};
      sa.sa_sigaction = on_segv;
      sa.sa_flags = SA_SIGINFO | SA_NODEFER;
      sigemptyset(&sa.sa_mask);
      sigaction(SIGSEGV, &sa, &r->old_segv);
    }
    return r;
  }();
  return *a;
}

void set_access(Arena& a, char* p, size_t bytes, bool rw) {
  if (!a.protect || bytes == 0) return;
  if (mprotect(p, bytes, rw ? PROT_READ | PROT_WRITE : PROT_NONE) != 0)
    die(std::string("mprotect failed: ") + std::strerror(errno));
}

// What p .. p + bytes is, "" when it lies in one live allocation.
std::string classify(Arena& a, const void* p, size_t bytes) {
  const auto u = reinterpret_cast<uintptr_t>(p);
  const auto b = reinterpret_cast<uintptr_t>(a.base);
  if (p == nullptr) return "a null pointer";
  if (u < b || u >= b + a.reserve) return "host memory, not a cuda::alloc allocation";
  auto it = a.blocks.upper_bound(u);
  if (it == a.blocks.begin()) return "fake device memory outside every allocation";
  --it;
  const Block& blk = it->second;
  const size_t off = u - it->first;
  if (off >= blk.cap) return "fake device memory outside every allocation";
  std::string where = "offset " + std::to_string(off) + " in the " +
                      std::to_string(blk.bytes) + "-byte allocation at " +
                      hex(reinterpret_cast<void*>(it->first));
  if (!blk.live) return where + ", which was freed (cuda::free): a use after free";
  if (off + bytes > blk.bytes)
    return where + ": the " + std::to_string(bytes) + " bytes used run " +
           std::to_string(off + bytes - blk.bytes) + " bytes past its end";
  return "";
}

bool in_arena(const Arena& a, const void* p) {
  const auto u = reinterpret_cast<uintptr_t>(p);
  const auto b = reinterpret_cast<uintptr_t>(a.base);
  return u >= b && u < b + a.reserve;
}

// One call of a "device" function: checks its pointers (under the arena lock), then go()
// opens the arena for the body; the destructor closes it when no other call is in flight.
class Call {
 public:
  explicit Call(const char* fn) : a_(arena()), fn_(fn), lock_(a_.mu) { ++a_.calls[fn]; }
  Call(const Call&) = delete;
  ~Call() {
    if (!entered_) return;
    std::lock_guard<std::mutex> l(a_.mu);
    if (--a_.active == 0) set_access(a_, a_.base, a_.top, false);
  }
  // A device pointer the function uses `bytes` of (nothing checked when bytes == 0).
  void dev(const char* arg, const void* p, size_t bytes) {
    if (bytes == 0) return;
    const std::string what = classify(a_, p, bytes);
    if (!what.empty()) fail(arg, p, bytes, "must be device memory, but is " + what);
  }
  // The same, where nullptr means "skip" (as the real kernel allows).
  void opt(const char* arg, const void* p, size_t bytes) {
    if (p != nullptr) dev(arg, p, bytes);
  }
  // A host pointer (to_device's source, to_host's destination).
  void host(const char* arg, const void* p, size_t bytes) {
    if (bytes == 0) return;
    if (p == nullptr) fail(arg, p, bytes, "is a null host pointer");
    const auto u = reinterpret_cast<uintptr_t>(p);
    if (in_arena(a_, p) || in_arena(a_, reinterpret_cast<const void*>(u + bytes - 1)))
      fail(arg, p, bytes, "must be host memory, but is fake device memory (" +
                              std::string(classify(a_, p, bytes).empty() ? "a live allocation" : classify(a_, p, bytes)) + ")");
  }
  // Either (cudaMemcpyDefault), but a device range must be a valid one.
  void any(const char* arg, const void* p, size_t bytes) {
    if (bytes == 0) return;
    if (p == nullptr) fail(arg, p, bytes, "is null");
    if (in_arena(a_, p)) dev(arg, p, bytes);
  }
  void go() {
    if (a_.active++ == 0) set_access(a_, a_.base, a_.top, true);
    entered_ = true;
    lock_.unlock();
  }

 private:
  [[noreturn]] void fail(const char* arg, const void* p, size_t bytes, const std::string& what) {
    die(std::string("cuda::") + fn_ + ": argument '" + arg + "' = " + hex(p) + " (" +
        std::to_string(bytes) + " bytes used) " + what);
  }
  Arena& a_;
  const char* fn_;
  std::unique_lock<std::mutex> lock_;
  bool entered_ = false;
};

constexpr size_t F = sizeof(float);
size_t n_of(long long a) { return a > 0 ? static_cast<size_t>(a) : 0; }
size_t prod(long long a, long long b) { return n_of(a) * n_of(b); }
// Floats spanned by a row-major matrix of `rows` x `cols` with row stride ld.
size_t mat(int rows, int cols, int ld) {
  if (rows <= 0 || cols <= 0) return 0;
  return static_cast<size_t>(rows - 1) * static_cast<size_t>(std::max(ld, 0)) + static_cast<size_t>(cols);
}

}  // namespace

namespace lossytp::fake_cuda {
Stats stats() {
  Arena& a = arena();
  std::lock_guard<std::mutex> l(a.mu);
  Stats s = a.st;
  for (const auto& [fn, n] : a.calls) s.calls[fn] += n;
  return s;
}
}  // namespace lossytp::fake_cuda

namespace lossytp::cuda {

// ---- runtime
bool device_available() { return true; }
std::string device_name() { return "fake-cuda (host memory)"; }
int device_count() { return 1; }
size_t free_memory_bytes() { return size_t{1} << 36; }
void set_device(int device) {
  if (device != 0)
    throw std::runtime_error("CUDA error in cudaSetDevice(" + std::to_string(device) +
                             "): invalid device ordinal (fake-cuda has one device)");
}
int current_device() { return 0; }
void synchronize() { Call c("synchronize"); }

void* alloc(size_t bytes) {
  Arena& a = arena();
  std::lock_guard<std::mutex> l(a.mu);
  ++a.calls["alloc"];
  const size_t cap = (std::max<size_t>(bytes, 1) + a.page - 1) / a.page * a.page;
  uintptr_t start = 0;
  if (auto it = a.pool.find(cap); it != a.pool.end()) {
    start = it->second;  // zero: its pages were dropped when freed
    a.pool.erase(it);
  } else {
    if (a.top + cap > a.reserve) throw std::runtime_error("fake-cuda: out of (fake) device memory");
    start = reinterpret_cast<uintptr_t>(a.base + a.top);
    a.top += cap;
    if (a.active > 0) set_access(a, reinterpret_cast<char*>(start), cap, true);
  }
  a.blocks[start] = Block{bytes, cap, true};
  ++a.st.allocs;
  ++a.st.live;
  a.st.live_bytes += bytes;
  a.st.peak_bytes = std::max(a.st.peak_bytes, a.st.live_bytes);
  return reinterpret_cast<void*>(start);
}

void free(void* p) {
  if (!p) return;
  Arena& a = arena();
  std::lock_guard<std::mutex> l(a.mu);
  ++a.calls["free"];
  auto it = a.blocks.find(reinterpret_cast<uintptr_t>(p));
  if (it == a.blocks.end() || !it->second.live) {
    const std::string what = it == a.blocks.end() ? classify(a, p, 1) : "freed already (a double free)";
    die("cuda::free: argument 'p' = " + hex(p) + " is not the start of a live allocation: " +
        (what.empty() ? "it points inside one" : what));
  }
  Block& b = it->second;
  b.live = false;
  --a.st.live;
  a.st.live_bytes -= b.bytes;
  ++a.st.frees;
  madvise(p, b.cap, MADV_DONTNEED);  // gives the memory back; the pages read as zero again
  a.quarantine.push_back(it->first);
  a.quarantine_bytes += b.cap;
  while (a.quarantine_bytes > kQuarantineBytes || a.quarantine.size() > kQuarantineBlocks) {
    const uintptr_t q = a.quarantine.front();
    a.quarantine.pop_front();
    const size_t cap = a.blocks.at(q).cap;
    a.quarantine_bytes -= cap;
    a.pool.emplace(cap, q);
  }
}

void to_device(void* dst, const void* src, size_t bytes) {
  Call c("to_device");
  c.dev("dst", dst, bytes);
  c.host("src", src, bytes);
  c.go();
  if (bytes) std::memcpy(dst, src, bytes);
}

void to_host(void* dst, const void* src, size_t bytes) {
  Call c("to_host");
  c.host("dst", dst, bytes);
  c.dev("src", src, bytes);
  c.go();
  if (bytes) std::memcpy(dst, src, bytes);
}

void copy_bytes(void* dst, const void* src, size_t bytes) {
  Call c("copy_bytes");
  if (bytes == 0 || dst == src) return;
  c.any("dst", dst, bytes);
  c.any("src", src, bytes);
  c.go();
  std::memmove(dst, src, bytes);
}

void memset_bytes(void* p, int value, size_t bytes) {
  Call c("memset_bytes");
  c.dev("p", p, bytes);
  c.go();
  if (bytes) std::memset(p, value, bytes);
}

// ---- GEMM
void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc) {
  Call c("sgemm");
  if (M == 0 || N == 0) return;
  c.dev("A", A, F * (trans_a ? mat(K, M, lda) : mat(M, K, lda)));
  c.dev("B", B, F * (trans_b ? mat(N, K, ldb) : mat(K, N, ldb)));
  c.dev("C", C, F * mat(M, N, ldc));
  c.go();
  cpu::sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC) {
  Call c("matmul_forward");
  if (N <= 0 || OC <= 0) return;
  c.dev("out", out, F * prod(N, OC));
  c.dev("inp", inp, F * prod(N, C));
  c.dev("weight", weight, F * prod(OC, C));
  c.opt("bias", bias, F * n_of(OC));
  c.go();
  cpu::matmul_forward(out, inp, weight, bias, N, C, OC);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int C, int OC) {
  Call c("matmul_backward");
  c.opt("dinp", dinp, F * prod(N, C));
  c.dev("dweight", dweight, F * prod(OC, C));  // never skipped by the real kernel (dinp, dbias are)
  c.opt("dbias", dbias, F * n_of(OC));
  c.dev("dout", dout, F * prod(N, OC));
  c.dev("inp", inp, F * prod(N, C));
  if (dinp) c.dev("weight", weight, F * prod(OC, C));
  c.go();
  cpu::matmul_backward(dinp, dweight, dbias, dout, inp, dinp ? weight : nullptr, N, C, OC);
}

void matmul_forward_bf16(float* out, const float* inp, const float* weight, const float* bias,
                         int N, int C, int OC) {
  Call c("matmul_forward_bf16");
  if (N <= 0 || OC <= 0) return;
  c.dev("out", out, F * prod(N, OC));
  c.dev("inp", inp, F * prod(N, C));
  c.dev("weight", weight, F * prod(OC, C));
  c.opt("bias", bias, F * n_of(OC));
  c.go();
  cpu::matmul_forward_bf16(out, inp, weight, bias, N, C, OC);
}

void matmul_backward_bf16(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, int N, int C, int OC) {
  Call c("matmul_backward_bf16");
  if (N <= 0 || OC <= 0 || C < 0) {
    c.opt("dinp", dinp, F * prod(N, C));
    c.go();
    if (dinp != nullptr && N > 0 && C > 0) std::fill(dinp, dinp + prod(N, C), 0.0f);
    return;
  }
  c.dev("dout", dout, F * prod(N, OC));
  c.opt("dinp", dinp, F * prod(N, C));
  c.opt("dweight", dweight, F * prod(OC, C));
  c.opt("dbias", dbias, F * n_of(OC));
  if (dinp) c.dev("weight", weight, F * prod(OC, C));
  if (dweight) c.dev("inp", inp, F * prod(N, C));
  c.go();
  cpu::matmul_backward_bf16(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
}

// ---- LayerNorm, GELU (the real kernels write and read every one of these pointers)
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C, float eps) {
  Call c("layernorm_forward");
  c.dev("out", out, F * prod(N, C));
  c.dev("mean", mean, F * n_of(N));
  c.dev("rstd", rstd, F * n_of(N));
  c.dev("inp", inp, F * prod(N, C));
  if (N > 0) {
    c.dev("weight", weight, F * n_of(C));
    c.dev("bias", bias, F * n_of(C));
  }
  c.go();
  cpu::layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps);
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C) {
  Call c("layernorm_backward");
  c.dev("dinp", dinp, F * prod(N, C));
  c.dev("dweight", dweight, F * n_of(C));
  c.dev("dbias", dbias, F * n_of(C));
  c.dev("dout", dout, F * prod(N, C));
  c.dev("inp", inp, F * prod(N, C));
  if (N > 0) c.dev("weight", weight, F * n_of(C));
  if (C > 0) {
    c.dev("mean", mean, F * n_of(N));
    c.dev("rstd", rstd, F * n_of(N));
  }
  c.go();
  cpu::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}

void gelu_forward(float* out, const float* inp, size_t n) {
  Call c("gelu_forward");
  c.dev("out", out, F * n);
  c.dev("inp", inp, F * n);
  c.go();
  cpu::gelu_forward(out, inp, n);
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  Call c("gelu_backward");
  c.dev("dinp", dinp, F * n);
  c.dev("inp", inp, F * n);
  c.dev("dout", dout, F * n);
  c.go();
  cpu::gelu_backward(dinp, inp, dout, n);
}

// ---- Llama: RMSNorm, rotary embedding, SwiGLU
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C,
                     float eps) {
  Call c("rmsnorm_forward");
  if (prod(N, C) == 0) return;
  c.dev("out", out, F * prod(N, C));
  c.opt("rstd", rstd, F * n_of(N));
  c.dev("inp", inp, F * prod(N, C));
  c.dev("weight", weight, F * n_of(C));
  c.go();
  cpu::rmsnorm_forward(out, rstd, inp, weight, N, C, eps);
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int N, int C) {
  Call c("rmsnorm_backward");
  if (prod(N, C) == 0 || (dinp == nullptr && dweight == nullptr)) return;
  c.opt("dinp", dinp, F * prod(N, C));
  c.opt("dweight", dweight, F * n_of(C));
  c.dev("dout", dout, F * prod(N, C));
  c.dev("inp", inp, F * prod(N, C));
  if (dinp) c.dev("weight", weight, F * n_of(C));
  c.dev("rstd", rstd, F * n_of(N));
  c.go();
  cpu::rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, N, C);
}

namespace {
void rope(const char* fn, bool backward, float* qkv, const float* cos, const float* sin, int B,
          int T, int NH, int NKV, int HD, int rot_dim) {
  Call c(fn);
  if (rot_dim > 0 && rot_dim <= HD) {  // else nothing is touched (or the CPU twin throws)
    c.dev("qkv", qkv, F * prod(B, T) * prod(NH + 2 * NKV, HD));
    c.dev("cos", cos, F * prod(T, rot_dim / 2));
    c.dev("sin", sin, F * prod(T, rot_dim / 2));
  }
  c.go();
  if (backward) cpu::rope_backward(qkv, cos, sin, B, T, NH, NKV, HD, rot_dim);
  else cpu::rope_forward(qkv, cos, sin, B, T, NH, NKV, HD, rot_dim);
}
}  // namespace

void rope_forward(float* qkv, const float* cos, const float* sin, int B, int T, int NH, int NKV,
                  int HD, int rot_dim) {
  rope("rope_forward", false, qkv, cos, sin, B, T, NH, NKV, HD, rot_dim);
}

void rope_backward(float* dqkv, const float* cos, const float* sin, int B, int T, int NH, int NKV,
                   int HD, int rot_dim) {
  rope("rope_backward", true, dqkv, cos, sin, B, T, NH, NKV, HD, rot_dim);
}

void swiglu_forward(float* out, const float* inp, int N, int F_) {
  Call c("swiglu_forward");
  if (prod(N, F_) == 0) return;
  c.dev("out", out, F * prod(N, F_));
  c.dev("inp", inp, F * prod(N, 2 * static_cast<long long>(F_)));
  c.go();
  cpu::swiglu_forward(out, inp, N, F_);
}

void swiglu_backward(float* dinp, const float* inp, const float* dout, int N, int F_) {
  Call c("swiglu_backward");
  if (prod(N, F_) == 0) return;
  c.dev("dinp", dinp, F * prod(N, 2 * static_cast<long long>(F_)));
  c.dev("inp", inp, F * prod(N, 2 * static_cast<long long>(F_)));
  c.dev("dout", dout, F * prod(N, F_));
  c.go();
  cpu::swiglu_backward(dinp, inp, dout, N, F_);
}

// ---- attention (fp32 and bf16 operands: the same pointers)
namespace {
// qkv/dqkv: (NH + 2 NKV) HD floats a token (grouped layout); out/dout: NH HD.
void attention_fwd(const char* fn, bool bf16, float* out, float* lse, const float* qkv, int B, int T,
                   int NH, int NKV, int HD) {
  Call c(fn);
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const size_t bt = prod(B, T), heads = prod(NH, HD), qkv_tok = prod(NH + 2 * NKV, HD);
  c.dev("out", out, F * bt * heads);
  c.dev("lse", lse, F * bt * n_of(NH));
  c.dev("qkv", qkv, F * bt * qkv_tok);
  c.go();
  if (bf16) cpu::attention_forward_bf16(out, lse, qkv, B, T, NH, NKV, HD);
  else cpu::attention_forward(out, lse, qkv, B, T, NH, NKV, HD);
}
void attention_bwd(const char* fn, bool bf16, float* dqkv, const float* dout, const float* qkv,
                   const float* out, const float* lse, int B, int T, int NH, int NKV, int HD) {
  Call c(fn);
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const size_t bt = prod(B, T), heads = prod(NH, HD), qkv_tok = prod(NH + 2 * NKV, HD);
  c.dev("dqkv", dqkv, F * bt * qkv_tok);
  c.dev("dout", dout, F * bt * heads);
  c.dev("qkv", qkv, F * bt * qkv_tok);
  c.dev("out", out, F * bt * heads);
  c.dev("lse", lse, F * bt * n_of(NH));
  c.go();
  if (bf16) cpu::attention_backward_bf16(dqkv, dout, qkv, out, lse, B, T, NH, NKV, HD);
  else cpu::attention_backward(dqkv, dout, qkv, out, lse, B, T, NH, NKV, HD);
}
}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                       int HD) {
  attention_fwd("attention_forward", false, out, lse, qkv, B, T, NH, NKV, HD);
}
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int NH, int NKV, int HD) {
  attention_bwd("attention_backward", false, dqkv, dout, qkv, out, lse, B, T, NH, NKV, HD);
}
void attention_forward_bf16(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                            int HD) {
  attention_fwd("attention_forward_bf16", true, out, lse, qkv, B, T, NH, NKV, HD);
}
void attention_backward_bf16(float* dqkv, const float* dout, const float* qkv, const float* out,
                             const float* lse, int B, int T, int NH, int NKV, int HD) {
  attention_bwd("attention_backward_bf16", true, dqkv, dout, qkv, out, lse, B, T, NH, NKV, HD);
}

// ---- semigroup attention: tensors on the device; ESR's per-head constants and every double*
// gradient on the HOST (kernels/cuda/ops.h)
void semigroup_attention_forward(float* y, float* o, float* lse, const float* qkv, int B, int T,
                                 int NH, int HD, float t, float c_) {
  Call c("semigroup_attention_forward");
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const size_t bt = prod(B, T), heads = prod(NH, HD);
  c.dev("y", y, F * bt * heads);
  c.dev("o", o, F * bt * heads);
  c.dev("lse", lse, F * bt * n_of(NH));
  c.dev("qkv", qkv, F * bt * 3 * heads);
  c.go();
  cpu::semigroup_attention_forward(y, o, lse, qkv, B, T, NH, HD, t, c_);
}
void semigroup_attention_backward(float* dqkv, double* dt, double* dc, const float* dy,
                                  const float* qkv, const float* o, const float* lse, int B, int T,
                                  int NH, int HD, float t, float c_) {
  Call c("semigroup_attention_backward");
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const size_t bt = prod(B, T), heads = prod(NH, HD);
  c.dev("dqkv", dqkv, F * bt * 3 * heads);
  c.host("dt", dt, sizeof(double));
  c.host("dc", dc, sizeof(double));
  c.dev("dy", dy, F * bt * heads);
  c.dev("qkv", qkv, F * bt * 3 * heads);
  c.dev("o", o, F * bt * heads);
  c.dev("lse", lse, F * bt * n_of(NH));
  c.go();
  cpu::semigroup_attention_backward(dqkv, dt, dc, dy, qkv, o, lse, B, T, NH, HD, t, c_);
}
void semigroup_esr_forward(float* y, float* u, float* w2, float* lse, float* rstd, float* qkvg,
                           const float* tau, const float* logw, const float* hbeta,
                           const float* oscale, float lam, float alpha, int B, int T, int NH,
                           int HD, int Nt) {
  Call c("semigroup_esr_forward");
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const size_t bt = prod(B, T), heads = prod(NH, HD);
  c.dev("y", y, F * bt * heads);
  c.dev("u", u, F * bt * heads);
  c.dev("w2", w2, F * bt * heads);
  c.dev("lse", lse, F * bt * n_of(NH));
  c.dev("rstd", rstd, F * bt * n_of(NH));
  c.dev("qkvg", qkvg, F * bt * 4 * heads);
  c.host("tau", tau, F * prod(NH, Nt));
  c.host("logw", logw, F * prod(NH, Nt));
  c.host("hbeta", hbeta, F * n_of(NH));
  c.host("oscale", oscale, F * n_of(NH));
  c.go();
  cpu::semigroup_esr_forward(y, u, w2, lse, rstd, qkvg, tau, logw, hbeta, oscale, lam, alpha, B, T, NH, HD, Nt);
}
void semigroup_esr_backward(float* dqkvg, double* g_lam, double* g_logtau, double* g_logw,
                            double* g_hbeta, double* g_oscale, const float* dy, const float* qkvg,
                            const float* rstd, const float* u, const float* w2, const float* lse,
                            const float* tau, const float* logw, const float* hbeta,
                            const float* oscale, float lam, float alpha, int B, int T, int NH,
                            int HD, int Nt) {
  Call c("semigroup_esr_backward");
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const size_t bt = prod(B, T), heads = prod(NH, HD), D = sizeof(double);
  c.dev("dqkvg", dqkvg, F * bt * 4 * heads);
  c.host("g_lam", g_lam, D);
  c.host("g_logtau", g_logtau, D * prod(NH, Nt));
  c.host("g_logw", g_logw, D * prod(NH, Nt));
  c.host("g_hbeta", g_hbeta, D * n_of(NH));
  c.host("g_oscale", g_oscale, D * n_of(NH));
  c.dev("dy", dy, F * bt * heads);
  c.dev("qkvg", qkvg, F * bt * 4 * heads);
  c.dev("rstd", rstd, F * bt * n_of(NH));
  c.dev("u", u, F * bt * heads);
  c.dev("w2", w2, F * bt * heads);
  c.dev("lse", lse, F * bt * n_of(NH));
  c.host("tau", tau, F * prod(NH, Nt));
  c.host("logw", logw, F * prod(NH, Nt));
  c.host("hbeta", hbeta, F * n_of(NH));
  c.host("oscale", oscale, F * n_of(NH));
  c.go();
  cpu::semigroup_esr_backward(dqkvg, g_lam, g_logtau, g_logw, g_hbeta, g_oscale, dy, qkvg, rstd, u, w2, lse, tau,
                              logw, hbeta, oscale, lam, alpha, B, T, NH, HD, Nt);
}

// ---- embeddings
void embedding_forward(float* out, const int32_t* tok, const float* table, int N, int C,
                       int vocab_start, int V) {
  Call c("embedding_forward");
  if (prod(N, C) == 0) return;
  c.dev("out", out, F * prod(N, C));
  c.dev("tok", tok, sizeof(int32_t) * n_of(N));
  c.dev("table", table, F * prod(V, C));
  c.go();
  cpu::embedding_forward(out, tok, table, N, C, vocab_start, V);
}

void embedding_backward(float* dtable, const int32_t* tok, const float* dout, int N, int C,
                        int vocab_start, int V) {
  Call c("embedding_backward");
  if (prod(N, C) == 0) return;
  c.dev("dtable", dtable, F * prod(V, C));
  c.dev("tok", tok, sizeof(int32_t) * n_of(N));
  c.dev("dout", dout, F * prod(N, C));
  c.go();
  cpu::embedding_backward(dtable, tok, dout, N, C, vocab_start, V);
}

void position_forward(float* out, const float* pos, int B, int T, int C) {
  Call c("position_forward");
  if (prod(B, T) * n_of(C) == 0) return;
  c.dev("out", out, F * prod(B, T) * n_of(C));
  c.dev("pos", pos, F * prod(T, C));
  c.go();
  cpu::position_forward(out, pos, B, T, C);
}

void position_backward(float* dpos, const float* dout, int B, int T, int C) {
  Call c("position_backward");
  if (prod(T, C) == 0) return;
  c.dev("dpos", dpos, F * prod(T, C));
  c.dev("dout", dout, F * prod(B, T) * n_of(C));
  c.go();
  cpu::position_backward(dpos, dout, B, T, C);
}

// ---- vocab-parallel cross-entropy
void ce_local_max(float* row_max, const float* logits, int N, int V) {
  Call c("ce_local_max");
  c.dev("row_max", row_max, F * n_of(N));
  c.dev("logits", logits, F * prod(N, V));
  c.go();
  cpu::ce_local_max(row_max, logits, N, V);
}

void ce_local_target(float* target_logit, const float* logits, const int32_t* tgt, int N, int V,
                     int vocab_start) {
  Call c("ce_local_target");
  c.dev("target_logit", target_logit, F * n_of(N));
  c.dev("logits", logits, F * prod(N, V));
  c.dev("tgt", tgt, sizeof(int32_t) * n_of(N));
  c.go();
  cpu::ce_local_target(target_logit, logits, tgt, N, V, vocab_start);
}

void ce_local_exp_sum(float* sum_exp, float* logits, const float* row_max, int N, int V) {
  Call c("ce_local_exp_sum");
  c.dev("sum_exp", sum_exp, F * n_of(N));
  c.dev("logits", logits, F * prod(N, V));
  c.dev("row_max", row_max, F * n_of(N));
  c.go();
  cpu::ce_local_exp_sum(sum_exp, logits, row_max, N, V);
}

void ce_losses(float* losses, const float* row_max, const float* sum_exp,
               const float* target_logit, const int32_t* tgt, int N) {
  Call c("ce_losses");
  c.dev("losses", losses, F * n_of(N));
  c.dev("row_max", row_max, F * n_of(N));
  c.dev("sum_exp", sum_exp, F * n_of(N));
  c.dev("target_logit", target_logit, F * n_of(N));
  c.dev("tgt", tgt, sizeof(int32_t) * n_of(N));
  c.go();
  cpu::ce_losses(losses, row_max, sum_exp, target_logit, tgt, N);
}

void ce_backward_inplace(float* logits, const float* sum_exp, const int32_t* tgt,
                         const float* dloss, int N, int V, int vocab_start) {
  Call c("ce_backward_inplace");
  if (prod(N, V) == 0) return;
  c.dev("logits", logits, F * prod(N, V));
  c.dev("sum_exp", sum_exp, F * n_of(N));
  c.dev("tgt", tgt, sizeof(int32_t) * n_of(N));
  c.dev("dloss", dloss, F * n_of(N));
  c.go();
  cpu::ce_backward_inplace(logits, sum_exp, tgt, dloss, N, V, vocab_start);
}

// ---- AdamW
void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t t) {
  Call c("adamw_update");
  c.dev("param", param, F * n);
  c.dev("grad", grad, F * n);
  c.dev("m", m, F * n);
  c.dev("v", v, F * n);
  c.go();
  cpu::adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t);
}

// ---- vectors, rows and columns
void copy(float* dst, const float* src, size_t n) {
  Call c("copy");
  if (n == 0 || dst == src) return;
  c.dev("dst", dst, F * n);
  c.dev("src", src, F * n);
  c.go();
  std::memmove(dst, src, F * n);
}

void fill(float* x, float v, size_t n) {
  Call c("fill");
  c.dev("x", x, F * n);
  c.go();
  std::fill(x, x + n, v);
}

void scale_inplace(float* x, float s, size_t n) {
  Call c("scale_inplace");
  c.dev("x", x, F * n);
  c.go();
  cpu::scale_inplace(x, s, n);
}

void add_inplace(float* y, const float* x, size_t n) {
  Call c("add_inplace");
  c.dev("y", y, F * n);
  c.dev("x", x, F * n);
  c.go();
  cpu::add_inplace(y, x, n);
}

void max_inplace(float* y, const float* x, size_t n) {
  Call c("max_inplace");
  c.dev("y", y, F * n);
  c.dev("x", x, F * n);
  c.go();
  cpu::max_inplace(y, x, n);
}

void bias_add(float* y, const float* b, int N, int C) {
  Call c("bias_add");
  if (prod(N, C) == 0) return;
  c.dev("y", y, F * prod(N, C));
  c.dev("b", b, F * n_of(C));
  c.go();
  cpu::bias_add(y, b, N, C);
}

void bias_grad(float* db, const float* dy, int N, int C) {
  Call c("bias_grad");
  if (C <= 0) return;
  c.dev("db", db, F * n_of(C));
  c.dev("dy", dy, F * prod(N, C));
  c.go();
  cpu::bias_grad(db, dy, N, C);
}

void copy_cols(float* dst, int ldd, const float* src, int lds, int N, int w) {
  Call c("copy_cols");
  if (prod(N, w) == 0) return;
  c.dev("dst", dst, F * mat(N, w, ldd));
  c.dev("src", src, F * mat(N, w, lds));
  c.go();
  cpu::copy_cols(dst, ldd, src, lds, N, w);
}

void scale_cols(float* x, int N, int C, int c0, float s) {
  Call c("scale_cols");
  if (c0 >= C || prod(N, C - c0) == 0) return;
  c.dev("x", x, F * prod(N, C));
  c.go();
  cpu::scale_cols(x, N, C, c0, s);
}

void fill_cols(float* x, int N, int ld, int c0, int c1, float v) {
  Call c("fill_cols");
  if (N <= 0 || c0 >= c1) return;
  c.dev("x", x + c0, F * mat(N, c1 - c0, ld));
  c.go();
  cpu::fill_cols(x, N, ld, c0, c1, v);
}

double sum(const float* x, size_t n) {
  Call c("sum");
  c.dev("x", x, F * n);
  c.go();
  return cpu::sum(x, n);
}

double sum_squares(const std::vector<std::pair<const float*, size_t>>& spans) {
  Call c("sum_squares");
  for (size_t i = 0; i < spans.size(); ++i) {
    const std::string arg = "spans[" + std::to_string(i) + "]";
    c.dev(arg.c_str(), spans[i].first, F * spans[i].second);
  }
  c.go();
  double s = 0.0;
  for (const auto& [p, n] : spans) s += cpu::sum_squares(p, n);
  return s;
}

// ---- network-model work: what the CUDA kernels run, per packet
void iid_mask(const net::PacketStream& s, uint32_t lane, uint64_t t, size_t n, uint8_t* lost) {
  Call c("iid_mask");
  c.dev("lost", lost, n);
  c.go();
  for (size_t i = 0; i < n; ++i) lost[i] |= static_cast<uint8_t>(net::iid_packet_lost(s, lane, t, i));
}

void ge_packet_mask(const net::PacketStream& s, uint64_t t_pi, uint64_t t_gb, uint64_t t_bg,
                    uint64_t t_loss_good, uint64_t t_loss_bad, size_t n, uint8_t* lost) {
  Call c("ge_packet_mask");
  c.dev("lost", lost, n);
  c.go();
  const uint64_t t_loss[2] = {t_loss_good, t_loss_bad};
  net::ge_packet_loss_reference(s, t_pi, t_gb, t_bg, t_loss, n, lost);
}

// The body of kernels/cuda/network.cu's apply_delivery_k, one element after the other.
void apply_delivery(float* own, const float* recv, size_t len, const uint8_t* mask,
                    size_t elems_per_packet, int fill, bool reduce, bool max_op, float rescale,
                    float* stale) {
  Call c("apply_delivery");
  if (len == 0) return;
  if (mask && elems_per_packet == 0) die("cuda::apply_delivery: elems_per_packet == 0 with a mask");
  const size_t epp = elems_per_packet;
  c.dev("own", own, F * len);
  c.dev("recv", recv, F * len);
  c.opt("mask", mask, mask ? (len + epp - 1) / epp : 0);
  c.opt("stale", stale, F * len);
  c.go();
  for (size_t i = 0; i < len; ++i) {
    const bool lost = mask && mask[i / epp];
    if (!lost) {
      const float r = recv[i];
      if (reduce) own[i] = max_op ? std::fmax(own[i], r) : (fill == 1 ? std::fma(rescale, r, own[i]) : own[i] + r);
      else own[i] = r;
      if (stale) stale[i] = r;
      continue;
    }
    switch (fill) {
      case 0:
        if (reduce) { if (max_op) own[i] = std::fmax(own[i], 0.0f); }
        else own[i] = 0.0f;
        break;
      case 3:
        if (!stale) die("cuda::apply_delivery: fill = stale on a lost packet, but 'stale' is nullptr");
        own[i] = reduce ? (max_op ? std::fmax(own[i], stale[i]) : own[i] + stale[i]) : stale[i];
        break;
      default:
        break;
    }
  }
}

// ---- wire precision
void bf16_round_inplace(float* x, size_t n) {
  Call c("bf16_round_inplace");
  c.dev("x", x, F * n);
  c.go();
  for (size_t i = 0; i < n; ++i) x[i] = bf16_round(x[i]);
}

}  // namespace lossytp::cuda
