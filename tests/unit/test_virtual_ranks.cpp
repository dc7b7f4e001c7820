// Virtual ranks (threads of one process, sim/local_backend.h): the same training as MPI ranks,
// without MPI. TP=2 and TP=2 x DP=2 match TP=1; network models act on the local collectives.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <thread>

#include "common/run_virtual.h"
#include "common/small_config.h"
#include "experiments/dataset.h"
#include "experiments/trainer.h"
#include "sim/comm.h"
#include "netmodels/netmodel.h"
#include "sim/local_backend.h"

using namespace lossytp;
using testing::run_virtual;
using testing::worst_relative;
namespace fs = std::filesystem;

namespace {

TrainConfig tiny(int tp, int dp, int micro, int global) {
  TrainConfig c = testing::small_config(tp, dp, micro, global, 20);
  c.comm_timeout = 60;
  return c;
}

}  // namespace

TEST_CASE("virtual ranks: TP=2 and TP=2 x DP=2 match TP=1", "[virtual]") {
  auto ref = run_virtual(tiny(1, 1, 4, 8), "ref").train_loss;
  CHECK(ref.back() < ref.front() - 0.3);
  CHECK(worst_relative(run_virtual(tiny(2, 1, 4, 8), "tp2").train_loss, ref) <= 1e-5);
  CHECK(worst_relative(run_virtual(tiny(2, 2, 2, 8), "tp2dp2").train_loss, ref) <= 1e-5);
}

TEST_CASE("virtual ranks: a lossy network acts and is counted", "[virtual]") {
  TrainConfig cfg = tiny(2, 1, 4, 4);
  cfg.net = "ge:preset=one,packet=16";
  TrainResult r = run_virtual(cfg, "ge");
  CHECK(std::isfinite(r.train_loss.back()));
  CHECK(std::abs(r.observed_loss_rate - 0.05) < 0.005);
}

TEST_CASE("local backend collectives give identical results on every member", "[virtual]") {
  const int p = 3;
  LocalWorld world(p);
  std::vector<std::vector<float>> sums(p), gathered(p), scattered(p), rings(p);
  std::vector<std::thread> threads;
  for (int r = 0; r < p; ++r)
    threads.emplace_back([&, r] {
      Comm comm(world.group("t", {0, 1, 2}, r), "tp", nullptr);
      std::vector<float> x = {1.0f * r, 2.0f, 0.1f * r};
      comm.all_reduce(x.data(), 3, "s");
      sums[r] = x;
      std::vector<float> mine = {static_cast<float>(r)}, all(p);
      comm.all_gather(mine.data(), all.data(), 1, "g");
      gathered[r] = all;
      std::vector<float> in(p, 1.0f + r), out(1);
      comm.reduce_scatter(in.data(), out.data(), 1, "rs");
      scattered[r] = out;
      std::vector<float> ring = {1.0f * r, 10.0f};
      comm.all_reduce_as_ring(ring.data(), 2, "ring");
      rings[r] = ring;  // checked after the join: Catch2's assertions are not thread-safe (TSan)
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < p; ++r) {
    CHECK(rings[r] == std::vector<float>{3.0f, 30.0f});
    CHECK(sums[r] == sums[0]);
    CHECK(sums[r][0] == 3.0f);
    CHECK(gathered[r] == std::vector<float>{0, 1, 2});
    CHECK(scattered[r][0] == 6.0f);
  }
}

TEST_CASE("local backend: a missing peer times out instead of hanging", "[virtual]") {
  LocalWorld world(2);
  auto b = world.group("t", {0, 1}, 0);
  b->set_timeout(0.2);
  float x = 1;
  CHECK_THROWS_AS(b->all_reduce(&x, 1, ReduceOp::Sum), CommTimeout);
}

TEST_CASE("ring all-gather and reduce-scatter equal the native ones, and lose packets when lossy", "[virtual]") {
  const int p = 3;
  const size_t m = 1000;
  LocalWorld world(p);
  auto spec_ring = std::make_shared<const net::NetSpec>(net::parse_net_spec("drop:rate=1e-12,scope=*"));
  auto spec_lossy = std::make_shared<const net::NetSpec>(net::parse_net_spec("drop:rate=0.3,packet=64,scope=*"));
  std::vector<std::vector<float>> gathered(p), scattered(p), lossy(p);
  std::vector<int64_t> lost(p);
  std::vector<std::thread> threads;
  for (int r = 0; r < p; ++r)
    threads.emplace_back([&, r] {
      Comm ring(world.group("ring", {0, 1, 2}, r), "tp", nullptr);
      ring.set_network(spec_ring, 1);
      std::vector<float> mine(m), all(m * p), in(m * p), out(m);
      for (size_t i = 0; i < m; ++i) mine[i] = static_cast<float>(r * 10000 + i);
      for (size_t i = 0; i < m * p; ++i) in[i] = static_cast<float>(r + 1) * (i % 7);
      ring.all_gather(mine.data(), all.data(), m, "g.fwd");
      ring.reduce_scatter(in.data(), out.data(), m, "rs.fwd");
      gathered[r] = all;
      scattered[r] = out;
      Comm bad(world.group("lossy", {0, 1, 2}, r), "tp", nullptr);
      bad.set_network(spec_lossy, 1);
      std::vector<float> all2(m * p);
      bad.all_gather(mine.data(), all2.data(), m, "g.fwd");
      lossy[r] = all2;
      lost[r] = bad.stats().sites().at("g.fwd").packets_lost;
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < p; ++r) {
    for (int q = 0; q < p; ++q)
      for (size_t i = 0; i < m; i += 97) CHECK(gathered[r][q * m + i] == static_cast<float>(q * 10000 + i));
    // block r of the sum over ranks of (rank + 1) * (i % 7): 6 * (i % 7)
    for (size_t i = 0; i < m; i += 89) CHECK(scattered[r][i] == 6.0f * ((r * m + i) % 7));
    CHECK(lost[r] > 0);
    // a lost packet of the gather reads zero (fill=zero); delivered ones are exact
    size_t zeros = 0;
    for (int q = 0; q < p; ++q)
      for (size_t i = 0; i < m; ++i) {
        const float v = lossy[r][q * m + i], want = static_cast<float>(q * 10000 + i);
        if (q != r && v == 0.0f && want != 0.0f) ++zeros;
        else CHECK(v == want);
      }
    CHECK(zeros > 0);
  }
}

TEST_CASE("virtual ranks: --bf16 (emulated on the CPU) trains close to fp32", "[virtual][bf16]") {
  const auto fp32 = run_virtual(tiny(2, 1, 4, 8), "fp32").train_loss;
  TrainConfig c = tiny(2, 1, 4, 8);
  c.bf16 = true;
  const auto bf16 = run_virtual(c, "bf16").train_loss;
  CHECK(bf16 != fp32);                          // the rounding acts
  CHECK(worst_relative(bf16, fp32) <= 3e-2);    // and stays a rounding
  CHECK(bf16.back() < bf16.front() - 0.3);
}

TEST_CASE("virtual ranks: --sequence-parallel at TP=2 and TP=2 x DP=2 matches TP=1", "[virtual][sp]") {
  auto ref = run_virtual(tiny(1, 1, 4, 8), "sp-ref").train_loss;
  TrainConfig a = tiny(2, 1, 4, 8), b = tiny(2, 2, 2, 8);
  a.sequence_parallel = b.sequence_parallel = true;
  CHECK(worst_relative(run_virtual(a, "sp-tp2").train_loss, ref) <= 1e-5);
  CHECK(worst_relative(run_virtual(b, "sp-tp2dp2").train_loss, ref) <= 1e-5);
}
