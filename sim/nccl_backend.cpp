#ifdef LOSSYTP_HAVE_NCCL
#include "sim/nccl_backend.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace lossytp {

namespace {
void check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess && r != ncclInProgress)
    throw std::runtime_error(std::string(what) + ": " + ncclGetErrorString(r));
}
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Sum ? ncclSum : ncclMax; }
}  // namespace

struct NcclBackend::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  float* scratch = nullptr;  // one float for barrier()
  double* f64 = nullptr;     // device staging of all_reduce_f64's host doubles
  size_t f64_n = 0;
  bool aborted = false;
  struct Pending { const void* buf; size_t bytes; int dst; };
  std::vector<Pending> isends;  // deferred until the next point-to-point call or wait_isends
};

NcclBackend::NcclBackend(MPI_Comm comm) : impl_(std::make_unique<Impl>()) {
  MPI_Comm_rank(comm, &rank_);
  MPI_Comm_size(comm, &size_);
  MPI_Group g, w;
  MPI_Comm_group(comm, &g);
  MPI_Comm_group(MPI_COMM_WORLD, &w);
  std::vector<int> local(size_);
  for (int i = 0; i < size_; ++i) local[i] = i;
  world_ranks_.resize(size_);
  MPI_Group_translate_ranks(g, size_, local.data(), w, world_ranks_.data());
  MPI_Group_free(&g);
  MPI_Group_free(&w);
  ncclUniqueId id;
  if (rank_ == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, comm);
  // Blocking (not cudaStreamNonBlocking): synchronises with the legacy default stream.
  check(cudaStreamCreate(&impl_->stream), "cudaStreamCreate");
  check(ncclCommInitRank(&impl_->comm, size_, id, rank_), "ncclCommInitRank");
  check(cudaMalloc(&impl_->scratch, sizeof(float)), "cudaMalloc");
}

NcclBackend::~NcclBackend() {
  if (impl_->comm) {
    if (impl_->aborted) ncclCommAbort(impl_->comm);
    else ncclCommDestroy(impl_->comm);
  }
  if (impl_->scratch) cudaFree(impl_->scratch);
  if (impl_->f64) cudaFree(impl_->f64);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

void NcclBackend::wait(const char* what) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  for (;;) {
    const cudaError_t q = cudaStreamQuery(impl_->stream);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) check(q, what);
    ncclResult_t async = ncclSuccess;
    check(ncclCommGetAsyncError(impl_->comm, &async), "ncclCommGetAsyncError");
    check(async, what);
    if (timeout_s_ > 0 && Clock::now() - start > std::chrono::duration<double>(timeout_s_)) {
      impl_->aborted = true;
      ncclCommAbort(impl_->comm);
      impl_->comm = nullptr;
      std::string ranks;
      for (int r : world_ranks_) ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
      throw CommTimeout(std::string(what) + " waited more than " + std::to_string(timeout_s_) +
                        " s for its peers (job ranks " + ranks + ")");
    }
    std::this_thread::yield();
  }
}

void NcclBackend::issue_isends() {
  for (const Impl::Pending& p : impl_->isends)
    check(ncclSend(p.buf, p.bytes, ncclChar, p.dst, impl_->comm, impl_->stream), "ncclSend");
  impl_->isends.clear();
}

void NcclBackend::isend(const void* buf, size_t bytes, int dst, int) {
  impl_->isends.push_back({buf, bytes, dst});
}

void NcclBackend::wait_isends() {
  if (impl_->isends.empty()) return;
  check(ncclGroupStart(), "ncclGroupStart");
  issue_isends();
  check(ncclGroupEnd(), "ncclGroupEnd");
  wait("send");
}

void NcclBackend::send(const void* buf, size_t bytes, int dst, int) {
  check(ncclGroupStart(), "ncclGroupStart");
  issue_isends();  // earlier messages to dst go first
  check(ncclSend(buf, bytes, ncclChar, dst, impl_->comm, impl_->stream), "ncclSend");
  check(ncclGroupEnd(), "ncclGroupEnd");
  wait("send");
}

void NcclBackend::recv(void* buf, size_t bytes, int src, int) {
  check(ncclGroupStart(), "ncclGroupStart");
  issue_isends();
  check(ncclRecv(buf, bytes, ncclChar, src, impl_->comm, impl_->stream), "ncclRecv");
  check(ncclGroupEnd(), "ncclGroupEnd");
  wait("recv");
}

void NcclBackend::sendrecv(const void* sbuf, size_t sbytes, int dst, void* rbuf, size_t rbytes,
                           int src, int) {
  check(ncclGroupStart(), "ncclGroupStart");
  issue_isends();
  check(ncclSend(sbuf, sbytes, ncclChar, dst, impl_->comm, impl_->stream), "ncclSend");
  check(ncclRecv(rbuf, rbytes, ncclChar, src, impl_->comm, impl_->stream), "ncclRecv");
  check(ncclGroupEnd(), "ncclGroupEnd");
  wait("ring hop");
}

void NcclBackend::all_reduce(float* buf, size_t n, ReduceOp op) {
  if (size_ == 1) return;
  check(ncclAllReduce(buf, buf, n, ncclFloat, nccl_op(op), impl_->comm, impl_->stream), "ncclAllReduce");
  wait("all-reduce");
}

void NcclBackend::all_reduce_f64(double* buf, size_t n, ReduceOp op) {
  if (size_ == 1 || n == 0) return;
  if (impl_->f64_n < n) {
    if (impl_->f64) check(cudaFree(impl_->f64), "cudaFree");
    impl_->f64 = nullptr;
    impl_->f64_n = 0;
    check(cudaMalloc(&impl_->f64, n * sizeof(double)), "cudaMalloc");
    impl_->f64_n = n;
  }
  // Host doubles (control values) through the device. The copy back is queued only once the
  // collective is done: a copy into pageable memory blocks, which would escape the timeout.
  check(cudaMemcpyAsync(impl_->f64, buf, n * sizeof(double), cudaMemcpyHostToDevice, impl_->stream),
        "cudaMemcpyAsync to device");
  check(ncclAllReduce(impl_->f64, impl_->f64, n, ncclDouble, nccl_op(op), impl_->comm, impl_->stream),
        "ncclAllReduce");
  wait("all-reduce");
  check(cudaMemcpyAsync(buf, impl_->f64, n * sizeof(double), cudaMemcpyDeviceToHost, impl_->stream),
        "cudaMemcpyAsync to host");
  check(cudaStreamSynchronize(impl_->stream), "cudaStreamSynchronize");
}

void NcclBackend::all_gather(const float* in, float* out, size_t n_per_rank) {
  check(ncclAllGather(in, out, n_per_rank, ncclFloat, impl_->comm, impl_->stream), "ncclAllGather");
  wait("all-gather");
}

void NcclBackend::reduce_scatter(const float* in, float* out, size_t n_per_rank) {
  check(ncclReduceScatter(in, out, n_per_rank, ncclFloat, ncclSum, impl_->comm, impl_->stream),
        "ncclReduceScatter");
  wait("reduce-scatter");
}

void NcclBackend::broadcast(void* buf, size_t bytes, int root) {
  check(ncclBroadcast(buf, buf, bytes, ncclChar, root, impl_->comm, impl_->stream), "ncclBroadcast");
  wait("broadcast");
}

void NcclBackend::barrier() {
  check(ncclAllReduce(impl_->scratch, impl_->scratch, 1, ncclFloat, ncclSum, impl_->comm, impl_->stream),
        "ncclAllReduce");
  wait("barrier");
}

// The plugin's factory (sim/nccl_backend.h); exported from the hidden-visibility plugin.
extern "C" __attribute__((visibility("default"))) Backend* lossytp_new_nccl_backend(MPI_Comm comm) {
  return new NcclBackend(comm);
}

}  // namespace lossytp
#endif
