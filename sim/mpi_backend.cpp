#include "sim/mpi_backend.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <climits>
#include <stdexcept>
#include <vector>

namespace lossytp {

namespace {
// MPI counts are int: large buffers go in chunks.
constexpr size_t kChunk = size_t(1) << 30;

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw std::runtime_error(std::string(what) + " failed: " + std::string(msg, len));
  }
}
MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::Sum ? MPI_SUM : MPI_MAX; }
}  // namespace

MpiBackend::MpiBackend(MPI_Comm comm) : comm_(comm) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

void MpiBackend::wait(MPI_Request* reqs, int n, const char* what) {
  if (timeout_s_ <= 0) {
    check(MPI_Waitall(n, reqs, MPI_STATUSES_IGNORE), what);
    return;
  }
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(timeout_s_);
  for (long spins = 0;; ++spins) {
    int done = 0;
    check(MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE), what);
    if (done) return;
    // A non-blocking collective only progresses inside MPI calls: poll without pausing, as the
    // blocking call would, for the first 50 ms; then gently, so that a rank waiting on a slow
    // or hung peer leaves the core to the ranks still computing.
    if ((spins & 255) != 0) continue;
    const auto now = Clock::now();
    if (now - start > std::chrono::milliseconds(50)) {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      if (wait_check_) wait_check_();  // may give up; the requests stay pending, as below
    }
    if (now > deadline) {
      std::string ranks;
      for (int r : world_ranks()) ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
      // The requests stay pending: the communicator is abandoned with the run.
      throw CommTimeout(std::string(what) + " waited more than " + std::to_string(timeout_s_) +
                        " s for its peers (job ranks " + ranks + ")");
    }
  }
}

std::vector<int> MpiBackend::world_ranks() const {
  MPI_Group mine, world;
  MPI_Comm_group(comm_, &mine);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  std::vector<int> local(size_), global(size_);
  for (int i = 0; i < size_; ++i) local[i] = i;
  MPI_Group_translate_ranks(mine, size_, local.data(), world, global.data());
  MPI_Group_free(&mine);
  MPI_Group_free(&world);
  return global;
}

void MpiBackend::send(const void* buf, size_t bytes, int dst, int tag) {
  const char* p = static_cast<const char*>(buf);
  size_t off = 0;
  do {
    int n = static_cast<int>(std::min(kChunk, bytes - off));
    MPI_Request r;
    check(MPI_Isend(p + off, n, MPI_BYTE, dst, tag, comm_, &r), "MPI_Isend");
    wait(&r, 1, "send");
    off += static_cast<size_t>(n);
  } while (off < bytes);
}

void MpiBackend::isend(const void* buf, size_t bytes, int dst, int tag) {
  const char* p = static_cast<const char*>(buf);
  size_t off = 0;
  do {
    int n = static_cast<int>(std::min(kChunk, bytes - off));
    pending_.emplace_back();
    check(MPI_Isend(p + off, n, MPI_BYTE, dst, tag, comm_, &pending_.back()), "MPI_Isend");
    off += static_cast<size_t>(n);
  } while (off < bytes);
}

void MpiBackend::wait_isends() {
  if (pending_.empty()) return;
  wait(pending_.data(), static_cast<int>(pending_.size()), "send");
  pending_.clear();
}

void MpiBackend::recv(void* buf, size_t bytes, int src, int tag) {
  char* p = static_cast<char*>(buf);
  size_t off = 0;
  do {
    int n = static_cast<int>(std::min(kChunk, bytes - off));
    MPI_Request r;
    check(MPI_Irecv(p + off, n, MPI_BYTE, src, tag, comm_, &r), "MPI_Irecv");
    wait(&r, 1, "recv");
    off += static_cast<size_t>(n);
  } while (off < bytes);
}

void MpiBackend::sendrecv(const void* sbuf, size_t sbytes, int dst, void* rbuf, size_t rbytes,
                          int src, int tag) {
  if (sbytes > INT_MAX || rbytes > INT_MAX)
    throw std::runtime_error("sendrecv of more than 2 GiB in one hop is not supported");
  MPI_Request r[2];
  check(MPI_Irecv(rbuf, static_cast<int>(rbytes), MPI_BYTE, src, tag, comm_, &r[0]), "MPI_Irecv");
  check(MPI_Isend(sbuf, static_cast<int>(sbytes), MPI_BYTE, dst, tag, comm_, &r[1]), "MPI_Isend");
  wait(r, 2, "ring hop");
}

void MpiBackend::all_reduce(float* buf, size_t n, ReduceOp op) {
  if (size_ == 1) return;
  for (size_t off = 0; off < n; off += kChunk / 4) {
    MPI_Request r;
    if (timeout_s_ <= 0) {  // the blocking collective picks the tuned algorithm
      check(MPI_Allreduce(MPI_IN_PLACE, buf + off, static_cast<int>(std::min(kChunk / 4, n - off)),
                          MPI_FLOAT, mpi_op(op), comm_), "MPI_Allreduce");
      continue;
    }
    check(MPI_Iallreduce(MPI_IN_PLACE, buf + off, static_cast<int>(std::min(kChunk / 4, n - off)),
                         MPI_FLOAT, mpi_op(op), comm_, &r), "MPI_Iallreduce");
    wait(&r, 1, "all-reduce");
  }
}

void MpiBackend::all_reduce_f64(double* buf, size_t n, ReduceOp op) {
  if (size_ == 1) return;
  MPI_Request r;
  check(MPI_Iallreduce(MPI_IN_PLACE, buf, static_cast<int>(n), MPI_DOUBLE, mpi_op(op), comm_, &r),
        "MPI_Iallreduce");
  wait(&r, 1, "all-reduce");
}

void MpiBackend::all_gather(const float* in, float* out, size_t n_per_rank) {
  if (n_per_rank > INT_MAX) throw std::runtime_error("all_gather block larger than INT_MAX");
  MPI_Request r;
  check(MPI_Iallgather(in, static_cast<int>(n_per_rank), MPI_FLOAT, out, static_cast<int>(n_per_rank),
                       MPI_FLOAT, comm_, &r), "MPI_Iallgather");
  wait(&r, 1, "all-gather");
}

void MpiBackend::reduce_scatter(const float* in, float* out, size_t n_per_rank) {
  if (n_per_rank > INT_MAX) throw std::runtime_error("reduce_scatter block larger than INT_MAX");
  MPI_Request r;
  check(MPI_Ireduce_scatter_block(in, out, static_cast<int>(n_per_rank), MPI_FLOAT, MPI_SUM, comm_, &r),
        "MPI_Ireduce_scatter_block");
  wait(&r, 1, "reduce-scatter");
}

void MpiBackend::broadcast(void* buf, size_t bytes, int root) {
  char* p = static_cast<char*>(buf);
  for (size_t off = 0; off < bytes; off += kChunk) {
    MPI_Request r;
    check(MPI_Ibcast(p + off, static_cast<int>(std::min(kChunk, bytes - off)), MPI_BYTE, root, comm_, &r),
          "MPI_Ibcast");
    wait(&r, 1, "broadcast");
  }
}

void MpiBackend::barrier() {
  MPI_Request r;
  check(MPI_Ibarrier(comm_, &r), "MPI_Ibarrier");
  wait(&r, 1, "barrier");
}

}  // namespace lossytp
