#include "sim/mpi_backend.h"

#include <algorithm>
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

void MpiBackend::send(const void* buf, size_t bytes, int dst, int tag) {
  const char* p = static_cast<const char*>(buf);
  for (size_t off = 0; off < bytes || off == 0; off += kChunk) {
    int n = static_cast<int>(std::min(kChunk, bytes - off));
    check(MPI_Send(p + off, n, MPI_BYTE, dst, tag, comm_), "MPI_Send");
    if (bytes == 0) break;
  }
}

void MpiBackend::recv(void* buf, size_t bytes, int src, int tag) {
  char* p = static_cast<char*>(buf);
  for (size_t off = 0; off < bytes || off == 0; off += kChunk) {
    int n = static_cast<int>(std::min(kChunk, bytes - off));
    check(MPI_Recv(p + off, n, MPI_BYTE, src, tag, comm_, MPI_STATUS_IGNORE), "MPI_Recv");
    if (bytes == 0) break;
  }
}

void MpiBackend::sendrecv(const void* sbuf, size_t sbytes, int dst, void* rbuf, size_t rbytes,
                          int src, int tag) {
  if (sbytes > INT_MAX || rbytes > INT_MAX)
    throw std::runtime_error("sendrecv of more than 2 GiB in one hop is not supported");
  check(MPI_Sendrecv(sbuf, static_cast<int>(sbytes), MPI_BYTE, dst, tag, rbuf,
                     static_cast<int>(rbytes), MPI_BYTE, src, tag, comm_, MPI_STATUS_IGNORE),
        "MPI_Sendrecv");
}

void MpiBackend::all_reduce(float* buf, size_t n, ReduceOp op) {
  if (size_ == 1) return;
  for (size_t off = 0; off < n; off += kChunk / 4)
    check(MPI_Allreduce(MPI_IN_PLACE, buf + off, static_cast<int>(std::min(kChunk / 4, n - off)),
                        MPI_FLOAT, mpi_op(op), comm_),
          "MPI_Allreduce");
}

void MpiBackend::all_reduce_f64(double* buf, size_t n, ReduceOp op) {
  if (size_ == 1) return;
  check(MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(n), MPI_DOUBLE, mpi_op(op), comm_),
        "MPI_Allreduce");
}

void MpiBackend::all_gather(const float* in, float* out, size_t n_per_rank) {
  if (n_per_rank > INT_MAX) throw std::runtime_error("all_gather block larger than INT_MAX");
  check(MPI_Allgather(in, static_cast<int>(n_per_rank), MPI_FLOAT, out,
                      static_cast<int>(n_per_rank), MPI_FLOAT, comm_),
        "MPI_Allgather");
}

void MpiBackend::reduce_scatter(const float* in, float* out, size_t n_per_rank) {
  if (n_per_rank > INT_MAX) throw std::runtime_error("reduce_scatter block larger than INT_MAX");
  check(MPI_Reduce_scatter_block(in, out, static_cast<int>(n_per_rank), MPI_FLOAT, MPI_SUM, comm_),
        "MPI_Reduce_scatter_block");
}

void MpiBackend::broadcast(void* buf, size_t bytes, int root) {
  char* p = static_cast<char*>(buf);
  for (size_t off = 0; off < bytes; off += kChunk)
    check(MPI_Bcast(p + off, static_cast<int>(std::min(kChunk, bytes - off)), MPI_BYTE, root, comm_),
          "MPI_Bcast");
}

void MpiBackend::barrier() { check(MPI_Barrier(comm_), "MPI_Barrier"); }

}  // namespace lossytp
