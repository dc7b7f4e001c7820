// Catch2 runner for tests that need several MPI ranks. ctest launches it under
// `mpirun -np N` with the tag [npN]; every rank runs the same tests and the exit status is the
// worst over the ranks. Only rank 0 prints a report; a failure on another rank still fails.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <mpi.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <unistd.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  Catch::Session session;
  int rc = session.applyCommandLine(argc, argv);
  // Ranks other than 0 report to a file, shown only when that rank failed.
  const std::string log = (std::filesystem::temp_directory_path() /
                           ("lossytp-mpi-test-rank" + std::to_string(rank) + "-" +
                            std::to_string(::getpid()) + ".log")).string();
  if (rc == 0) {
    if (rank != 0) session.configData().outputFilename = log;
    rc = session.run();
  }
  if (rank != 0) {
    if (rc != 0) {
      std::ifstream in(log);
      std::cerr << "---- report of rank " << rank << " ----\n" << in.rdbuf() << std::flush;
    }
    std::filesystem::remove(log);
  }
  int worst = rc;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && worst != rc) std::fprintf(stderr, "a test failed on another rank\n");
  MPI_Finalize();
  return worst;
}
