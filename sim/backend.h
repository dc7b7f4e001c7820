// Backend: the transport of one process group. It moves bytes point-to-point and offers the
// native collectives of the underlying library (MPI, NCCL, or threads of one process). It knows
// nothing about sites or network models: Comm (sim/comm.h) adds those on top.
// Buffers live on the backend's device(): send/recv/sendrecv, the float collectives and
// broadcast take device pointers on a CUDA backend. all_reduce_f64 always takes host doubles
// (control values: loss sums, norms, flags).
#pragma once
#include <cstddef>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/device.h"

namespace lossytp {

enum class ReduceOp { Sum, Max };

// A communication call that did not complete within the backend's timeout: a peer has died,
// failed or hangs. The run that owns the group fails instead of hanging forever.
class CommTimeout : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;
  // Where the buffers of every call but all_reduce_f64 live.
  virtual Device device() const { return Device::CPU; }

  virtual void send(const void* buf, size_t bytes, int dst, int tag) = 0;
  virtual void recv(void* buf, size_t bytes, int src, int tag) = 0;
  // Sends to dst and receives from src at once (a ring hop without deadlock).
  virtual void sendrecv(const void* sbuf, size_t sbytes, int dst, void* rbuf, size_t rbytes,
                        int src, int tag) = 0;
  // Sends without waiting for the receiver: buf must stay untouched until wait_isends(), which
  // completes every isend of this backend. Default: the blocking send (backends whose send is
  // eager, as the local one, keep it).
  virtual void isend(const void* buf, size_t bytes, int dst, int tag) { send(buf, bytes, dst, tag); }
  virtual void wait_isends() {}

  // Native collectives on fp32 buffers.
  virtual void all_reduce(float* buf, size_t n, ReduceOp op) = 0;
  // On host doubles, whatever device() is.
  virtual void all_reduce_f64(double* buf, size_t n, ReduceOp op) = 0;
  virtual void all_gather(const float* in, float* out, size_t n_per_rank) = 0;
  virtual void reduce_scatter(const float* in, float* out, size_t n_per_rank) = 0;
  virtual void broadcast(void* buf, size_t bytes, int root) = 0;
  virtual void barrier() = 0;

  // Seconds a call may wait for its peers before it throws CommTimeout (<= 0: forever).
  virtual void set_timeout(double seconds) { timeout_s_ = seconds; }
  double timeout() const { return timeout_s_; }
  // The group's members as ranks of the whole job, for messages about hangs.
  virtual std::vector<int> world_ranks() const { return {}; }
  // Called now and then while a call waits for its peers (with a timeout set; not by NCCL); it
  // throws to give up the wait, e.g. when another rank of the run has failed.
  void set_wait_check(std::function<void()> check) { wait_check_ = std::move(check); }

 protected:
  double timeout_s_ = 0.0;
  std::function<void()> wait_check_;
};

}  // namespace lossytp
