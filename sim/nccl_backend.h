// Backend over NCCL (GPU memory), one rank per GPU, created from an MPI communicator: rank 0's
// ncclUniqueId is broadcast over MPI. Buffers passed to it are device pointers (all_reduce_f64:
// host doubles, staged through the device). Its stream is a blocking one, so it is ordered with
// the legacy default stream every kernel and copy runs on: a collective sees the results of the
// kernels queued before it, and kernels queued after it see its result. Point-to-point
// messages use ncclSend/ncclRecv (sendrecv in one group, so a ring hop cannot deadlock); the
// collectives are NCCL's native ones. Every call waits for its stream with the backend's timeout:
// a hung peer aborts the NCCL communicator and throws CommTimeout. Built with the GPU path only
// (LOSSYTP_HAVE_NCCL, defined with LOSSYTP_HAVE_CUDA when CMake finds NCCL).
#pragma once
#ifdef LOSSYTP_HAVE_NCCL
#include <mpi.h>

#include <memory>

#include "sim/backend.h"

namespace lossytp {

class NcclBackend final : public Backend {
 public:
  // Collective over `comm`; uses the calling rank's current CUDA device.
  explicit NcclBackend(MPI_Comm comm);
  ~NcclBackend() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }
  Device device() const override { return Device::CUDA; }

  void send(const void* buf, size_t bytes, int dst, int tag) override;
  void recv(void* buf, size_t bytes, int src, int tag) override;
  void sendrecv(const void* sbuf, size_t sbytes, int dst, void* rbuf, size_t rbytes, int src,
                int tag) override;
  // Deferred: an isend is issued with the next recv, sendrecv or send (in one NCCL group with
  // it, so two ranks that isend to each other before receiving cannot deadlock) or by
  // wait_isends(), which waits for them.
  void isend(const void* buf, size_t bytes, int dst, int tag) override;
  void wait_isends() override;
  void all_reduce(float* buf, size_t n, ReduceOp op) override;
  void all_reduce_f64(double* buf, size_t n, ReduceOp op) override;
  void all_gather(const float* in, float* out, size_t n_per_rank) override;
  void reduce_scatter(const float* in, float* out, size_t n_per_rank) override;
  void broadcast(void* buf, size_t bytes, int root) override;
  void barrier() override;
  std::vector<int> world_ranks() const override { return world_ranks_; }

 private:
  void wait(const char* what);  // stream done, or CommTimeout after timeout()
  void issue_isends();  // queues the deferred isends (inside the caller's NCCL group)
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, size_ = 1;
  std::vector<int> world_ranks_;
};

// NcclBackend lives in the GPU plugin (liblossytp_cuda.so, kernels/cuda_plugin.h), so that CPU
// processes never map NCCL. make_nccl_backend is the core's way to one: it opens the plugin and
// calls the plugin's factory, lossytp_new_nccl_backend (C linkage, for dlsym; defined in
// sim/nccl_backend.cpp, part of the plugin only).
std::unique_ptr<Backend> make_nccl_backend(MPI_Comm comm);
extern "C" Backend* lossytp_new_nccl_backend(MPI_Comm comm);

}  // namespace lossytp
#endif
