// Backend over an MPI communicator (CPU memory). The communicator is borrowed: the caller keeps
// it alive (sim/layout.cpp creates and frees the TP and DP communicators). Every call is issued
// non-blocking and waited for with the backend's timeout, so a hung peer becomes a CommTimeout.
#pragma once
#include <mpi.h>

#include <vector>

#include "sim/backend.h"

namespace lossytp {

class MpiBackend final : public Backend {
 public:
  explicit MpiBackend(MPI_Comm comm);
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }
  MPI_Comm comm() const { return comm_; }

  void send(const void* buf, size_t bytes, int dst, int tag) override;
  void recv(void* buf, size_t bytes, int src, int tag) override;
  void sendrecv(const void* sbuf, size_t sbytes, int dst, void* rbuf, size_t rbytes, int src,
                int tag) override;
  // MPI_Isend (chunked as send is); the requests wait in pending_ until wait_isends().
  void isend(const void* buf, size_t bytes, int dst, int tag) override;
  void wait_isends() override;
  void all_reduce(float* buf, size_t n, ReduceOp op) override;
  void all_reduce_f64(double* buf, size_t n, ReduceOp op) override;
  void all_gather(const float* in, float* out, size_t n_per_rank) override;
  void reduce_scatter(const float* in, float* out, size_t n_per_rank) override;
  void broadcast(void* buf, size_t bytes, int root) override;
  void barrier() override;
  std::vector<int> world_ranks() const override;

 private:
  // Waits for the requests; throws CommTimeout after timeout() seconds.
  void wait(MPI_Request* reqs, int n, const char* what);
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::vector<MPI_Request> pending_;  // isends not yet waited for
};

}  // namespace lossytp
