// metrics.h5 of a real TP=2 run holds what design.md promises.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "experiments/metrics_file.h"
#include "experiments/trainer.h"
#include "mpi_helpers.h"

using namespace lossytp;
using namespace lossytp::testing;

TEST_CASE("a TP=2 run writes the metrics.h5 schema", "[np2]") {
  const std::string dir = shared_tmpdir("schema");
  TrainConfig cfg = small_config(2, 1, 4, 4, 12);
  cfg.out = dir + "/run";
  TokenCorpus corpus = load_corpus(cfg.data);
  TrainResult r = train(cfg, corpus, MPI_COMM_WORLD);
  CHECK(r.status == "completed");
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() != 0) return;

  MetricsFile f = MetricsFile::load(dir + "/run/metrics.h5");
  const auto& a = f.attrs();
  REQUIRE(a.count("status"));
  CHECK(std::get<std::string>(a.at("status")) == "completed");
  REQUIRE(a.count("version"));
  REQUIRE(a.count("config"));
  auto j = nlohmann::json::parse(std::get<std::string>(a.at("config")));
  CHECK(j["tensor-model-parallel-size"] == 2);
  CHECK(j["train-iters"] == 12);
  REQUIRE(a.count("data_entropy_floor"));
  CHECK(std::get<double>(a.at("data_entropy_floor")) == Approx(*corpus.entropy_floor));

  for (const char* s : {"train/loss", "train/lr", "train/grad_norm", "train/step_time_s"}) {
    INFO(s);
    REQUIRE(f.series(s));
    CHECK(f.series(s)->size() == 12);
  }
  REQUIRE(f.int_series("train/iteration"));
  CHECK(f.int_series("train/iteration")->back() == 12);
  CHECK((*f.series("train/loss"))[11] == Approx(r.train_loss[11]));
  // eval at iteration 10 (interval) and 12 (the end)
  REQUIRE(f.int_series("eval/iteration"));
  CHECK(*f.int_series("eval/iteration") == std::vector<int64_t>{10, 12});
  REQUIRE(f.series("eval/loss"));
  CHECK(f.series("eval/loss")->size() == 2);
  // per-site traffic of the TP all-reduces
  REQUIRE(f.int_series("comm/layer0.mlp.fc2.fwd/bytes"));
  CHECK(f.int_series("comm/layer0.mlp.fc2.fwd/bytes")->size() == 12);
  // one all-reduce of N x C floats per iteration: 2(p-1) messages of N*C/2 floats, p = 2
  CHECK(f.int_series("comm/layer0.mlp.fc2.fwd/bytes")->back() == 2 * (4 * 32 * 64 / 2) * 4);
  CHECK(f.int_series("comm/dp.grad/bytes") == nullptr);  // dp = 1 sends nothing
}
