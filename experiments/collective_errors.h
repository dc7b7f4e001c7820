// Errors found before training, agreed on by every rank: each rank checks what it can, then
// all_ranks_ok() tells everyone whether anyone failed, and the lowest failing rank alone prints
// its message, so a bad input gives one message and a clean exit instead of an abort storm.
#pragma once
#include <mpi.h>

#include <cstdio>
#include <string>

namespace lossytp {

inline bool all_ranks_ok(const std::string& error, MPI_Comm comm = MPI_COMM_WORLD) {
  int me = 0, size = 1;
  MPI_Comm_rank(comm, &me);
  MPI_Comm_size(comm, &size);
  int first_bad = error.empty() ? size : me;
  MPI_Allreduce(MPI_IN_PLACE, &first_bad, 1, MPI_INT, MPI_MIN, comm);
  if (first_bad == size) return true;
  if (me == first_bad) {
    std::fprintf(stderr, "lossytp: error: %s\n", error.c_str());
    std::fflush(stderr);
  }
  return false;
}

}  // namespace lossytp
