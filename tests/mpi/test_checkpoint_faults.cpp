// Checksummed checkpoints under MPI: a byte flipped in another rank's file of the latest
// checkpoint makes every rank agree on the newest intact one, and the resumed run reproduces the
// uninterrupted trajectory; with none intact every rank fails with the file named.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "experiments/checkpoint.h"
#include "experiments/metrics_file.h"
#include "experiments/trainer.h"
#include "mpi_helpers.h"

using namespace lossytp;
using namespace lossytp::testing;
namespace fs = std::filesystem;

namespace {
void flip_middle_byte(const std::string& path) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  const auto mid = static_cast<std::streamoff>(fs::file_size(path) / 2);
  f.seekg(mid);
  char c = 0;
  f.read(&c, 1);
  f.seekp(mid);
  f.put(static_cast<char>(c ^ 0x01));
}
}  // namespace

TEST_CASE("a corrupt rank file of the latest checkpoint: all ranks fall back together", "[np2]") {
  const std::string dir = shared_tmpdir("ckfault");
  TrainConfig cfg = small_config(2, 1, 4, 4, 20);
  cfg.save_interval = 5;
  cfg.keep_checkpoints = 0;
  cfg.comm_timeout = 30;
  TokenCorpus corpus = load_corpus(cfg.data);

  TrainConfig whole = cfg;
  whole.out = dir + "/whole";
  const auto expected = train(whole, corpus, MPI_COMM_WORLD).train_loss;
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {  // the run as if killed after iteration 15, rank 1's file then damaged
    for (int r = 0; r < 2; ++r) fs::remove(checkpoint_file(whole.out, r, 20));
    std::ofstream(whole.out + "/checkpoint/latest") << "15\n";
    flip_middle_byte(checkpoint_file(whole.out, 1, 15));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  TrainConfig resumed = cfg;
  resumed.out = resumed.load = whole.out;
  TrainResult r = train(resumed, corpus, MPI_COMM_WORLD);
  CHECK(r.start_iteration == 10);
  REQUIRE(r.train_loss.size() == 10);
  for (size_t i = 0; i < 10; ++i) CHECK(r.train_loss[i] == expected[10 + i]);  // bit-identical

  // Nothing intact: every rank throws, rank 0 naming the files.
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0)
    for (int64_t it : checkpoint_iterations(whole.out, 2)) fs::resize_file(checkpoint_file(whole.out, 1, it), 100);
  MPI_Barrier(MPI_COMM_WORLD);
  std::string what;
  try {
    train(resumed, corpus, MPI_COMM_WORLD);
  } catch (const std::exception& e) {
    what = e.what();
  }
  CHECK_THAT(what, Catch::Contains("no intact checkpoint"));
  if (world_rank() == 0) CHECK_THAT(what, Catch::Contains("rank1-it20.bin is truncated"));
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}
