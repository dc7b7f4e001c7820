// Helpers shared by the MPI tests.
#pragma once
#include <mpi.h>

#include <filesystem>
#include <string>
#include <unistd.h>

#include "experiments/dataset.h"
#include "common/small_config.h"
#include "experiments/train_config.h"

namespace lossytp::testing {

inline int world_rank() { int r = 0; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
inline int world_size() { int s = 1; MPI_Comm_size(MPI_COMM_WORLD, &s); return s; }

// A temporary folder that every rank agrees on (rank 0 names it).
inline std::string shared_tmpdir(const std::string& tag) {
  char buf[256] = {0};
  if (world_rank() == 0) {
    auto p = std::filesystem::temp_directory_path() /
             ("lossytp-test-" + tag + "-" + std::to_string(::getpid()));
    std::filesystem::create_directories(p);
    std::snprintf(buf, sizeof buf, "%s", p.string().c_str());
  }
  MPI_Bcast(buf, sizeof buf, MPI_CHAR, 0, MPI_COMM_WORLD);
  return buf;
}

}  // namespace lossytp::testing
