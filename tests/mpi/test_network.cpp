// Network models acting on real collectives: the ring algorithm against the native collective,
// endpoint masking, scopes, accounting, CAAT-Net against exact, and a lossy training run.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "experiments/metrics_file.h"
#include "experiments/trainer.h"
#include "kernels/philox.h"
#include "mpi_helpers.h"
#include "sim/comm.h"
#include "sim/mpi_backend.h"

using namespace lossytp;
using namespace lossytp::testing;

namespace {

std::unique_ptr<Comm> world_comm(const std::string& spec) {
  auto c = std::make_unique<Comm>(std::make_unique<MpiBackend>(MPI_COMM_WORLD), "tp",
                                  std::make_shared<CommStats>());
  if (!spec.empty()) c->set_network(std::make_shared<const net::NetSpec>(net::parse_net_spec(spec)), 11);
  return c;
}

std::vector<float> random_vector(size_t n, uint64_t stream) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = philox_normal(5, stream, i);
  return v;
}

// true when every rank holds the same vector
bool consistent(const std::vector<float>& v) {
  std::vector<float> all(v.size() * world_size());
  MPI_Allgather(v.data(), static_cast<int>(v.size()), MPI_FLOAT, all.data(), static_cast<int>(v.size()),
                MPI_FLOAT, MPI_COMM_WORLD);
  for (int r = 1; r < world_size(); ++r)
    for (size_t i = 0; i < v.size(); ++i)
      if (all[r * v.size() + i] != all[i]) return false;
  return true;
}

void ring_equals_native() {
  auto comm = world_comm("");
  for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(100003)}) {
    auto a = random_vector(n, world_rank()), b = a;
    comm->all_reduce_as_ring(a.data(), n, "t.ring");
    comm->all_reduce(b.data(), n, "t.native");
    double worst = 0;
    for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(double(a[i]) - b[i]) / (1 + std::abs(b[i])));
    INFO("n = " << n);
    CHECK(worst < 1e-5);
    CHECK(consistent(a));
  }
  // MAX through the ring as well
  auto m = random_vector(333, world_rank() + 10), mref = m;
  comm->all_reduce_as_ring(m.data(), m.size(), "t.max", ReduceOp::Max);
  comm->all_reduce(mref.data(), mref.size(), "t.max2", ReduceOp::Max);
  CHECK(m == mref);
  // the ring moves what the native collective is counted for
  const auto& s = comm->stats().sites();
  CHECK(s.at("t.ring").messages == s.at("t.native").messages);
}

}  // namespace

TEST_CASE("ring all-reduce under exact equals the native collective (2 ranks)", "[np2]") { ring_equals_native(); }
TEST_CASE("ring all-reduce under exact equals the native collective (4 ranks)", "[np4]") { ring_equals_native(); }

TEST_CASE("ring mode: losses are counted and ranks can disagree", "[np2]") {
  auto comm = world_comm("drop:rate=0.2,packet=64,scope=*");
  const size_t n = 64 * 1000;
  auto a = random_vector(n, world_rank());
  comm->begin_step(3);
  comm->all_reduce(a.data(), n, "layer0.attn.proj.fwd");
  const SiteCounters& c = comm->stats().sites().at("layer0.attn.proj.fwd");
  // 2 hops of n/2 floats = 2000 packets of 16 floats each
  CHECK(c.packets == 4000);
  CHECK(c.packets_exposed == 4000);
  CHECK(c.packets_lost > 650);
  CHECK(c.packets_lost < 950);
  CHECK(c.elements_filled == c.packets_lost * 16);
  CHECK_FALSE(consistent(a));
}

TEST_CASE("endpoint mode masks each contribution once and stays consistent", "[np2]") {
  auto comm = world_comm("drop:rate=0.3,mode=endpoint,packet=64,scope=*");
  const size_t n = 16 * 500;
  std::vector<float> ones(n, 1.0f);
  comm->all_reduce(ones.data(), n, "layer0.mlp.fc2.fwd");
  CHECK(consistent(ones));
  // each element is the number of ranks whose packet arrived
  size_t partial = 0;
  for (float v : ones) { CHECK(v >= 0); CHECK(v <= world_size()); partial += v < world_size(); }
  CHECK(partial > 0);
  const SiteCounters& c = comm->stats().sites().at("layer0.mlp.fc2.fwd");
  CHECK(c.packets == 500);
  CHECK(std::abs(c.packets_lost / 500.0 - 0.3) < 0.1);
}

TEST_CASE("scopes select exactly the matching sites", "[np2]") {
  auto comm = world_comm("drop:rate=0.5,scope=tp.fwd");
  std::vector<float> a(5000, 1.0f), b(5000, 1.0f), c(5000, 1.0f);
  comm->all_reduce(a.data(), a.size(), "layer0.attn.proj.fwd");
  comm->all_reduce(b.data(), b.size(), "layer0.attn.qkv.bwd");
  comm->all_reduce(c.data(), c.size(), "ce.sumexp");
  const auto& s = comm->stats().sites();
  CHECK(s.at("layer0.attn.proj.fwd").packets_lost > 0);
  CHECK(s.at("layer0.attn.qkv.bwd").packets_lost == 0);
  CHECK(s.at("ce.sumexp").packets_lost == 0);
  for (float v : b) CHECK(v == world_size());
}

TEST_CASE("reliable transport delivers exact data and costs more simulated time", "[np2]") {
  auto lossy = world_comm("drop:rate=0.1,transport=reliable,scope=*");
  auto exact = world_comm("");
  auto a = random_vector(20000, world_rank()), b = a;
  lossy->all_reduce(a.data(), a.size(), "dp.grad");
  exact->all_reduce(b.data(), b.size(), "dp.grad");
  CHECK(a == b);
  const SiteCounters& l = lossy->stats().sites().at("dp.grad");
  const SiteCounters& e = exact->stats().sites().at("dp.grad");
  CHECK(l.retransmissions > 0);
  CHECK(l.sim_seconds > e.sim_seconds);
}

namespace {
std::vector<double> run_net(const std::string& spec, const std::string& dir, int iters, TrainResult* out = nullptr) {
  TrainConfig cfg = small_config(2, 1, 4, 4, iters);
  cfg.net = spec;
  cfg.out = dir;
  TokenCorpus corpus = load_corpus(cfg.data);
  TrainResult r = train(cfg, corpus, MPI_COMM_WORLD);
  if (out) *out = r;
  return r.train_loss;
}
}  // namespace

TEST_CASE("caat:p=1 matches exact over 20 iterations", "[np2]") {
  const std::string dir = shared_tmpdir("caat1");
  auto exact = run_net("exact", dir + "/exact", 20);
  auto caat = run_net("caat:p=1", dir + "/caat", 20);
  double worst = 0;
  for (size_t i = 0; i < exact.size(); ++i) worst = std::max(worst, std::abs(caat[i] - exact[i]) / exact[i]);
  INFO("worst relative difference " << worst);
  CHECK(worst <= 1e-5);
}

TEST_CASE("caat:p=0.5 moves half the TP activation bytes of exact and still trains", "[np2]") {
  const std::string dir = shared_tmpdir("caat05");
  run_net("exact", dir + "/exact", 3);
  auto losses = run_net("caat:p=0.5", dir + "/caat", 20);
  CHECK(std::isfinite(losses.back()));
  CHECK(losses.back() < losses.front());
  if (world_rank() != 0) return;
  MetricsFile e = MetricsFile::load(dir + "/exact/metrics.h5");
  MetricsFile c = MetricsFile::load(dir + "/caat/metrics.h5");
  for (const char* site : {"layer0.attn.proj.fwd", "layer1.mlp.fc2.fwd"}) {
    INFO(site);
    const std::string key = std::string("comm/") + site + "/bytes";
    REQUIRE(e.int_series(key));
    REQUIRE(c.int_series(key));
    CHECK(c.int_series(key)->front() * 2 == e.int_series(key)->front());
  }
  // column-parallel input gradients are no longer all-reduced
  CHECK(c.int_series("comm/layer0.attn.qkv.bwd/bytes") == nullptr);
  CHECK(e.int_series("comm/layer0.attn.qkv.bwd/bytes") != nullptr);
}

TEST_CASE("TP=2 training under Gilbert-Elliott loss: finite loss, loss rate near theory", "[np2]") {
  const std::string dir = shared_tmpdir("ge");
  TrainResult r;
  // small packets: many of them, so the observed rate is a tight estimate
  auto losses = run_net("ge:preset=one,packet=16", dir + "/ge", 20, &r);
  CHECK(std::isfinite(losses.back()));
  const double theory = 0.01 / (0.01 + 0.19);
  INFO("observed " << r.observed_loss_rate << " theory " << theory);
  CHECK(std::abs(r.observed_loss_rate - theory) <= 0.05 * theory);
}
