// fill=count (issue 16): a reduction sums the contributions that arrived and scales each element
// by contributors / arrived (Weintraub, Banner and Orda 2025). With every rank's contribution
// drawn i.i.d. with mean mu, E[result] = p mu for any loss pattern (given at least one arrival),
// while fill=zero gives mu E[K] < p mu. Checked over many elements (each its own draw) in ring
// and endpoint mode, for all-reduce and reduce-scatter, with and without encode=hadamard (counts
// are then the arrived fraction of each Hadamard block); exact networks give the exact sum.
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/comm_ranks.h"
#include "netmodels/netmodel.h"
#include "sim/comm.h"
#include "sim/local_backend.h"

using namespace lossytp;

namespace {

constexpr int kRanks = 4;
constexpr size_t kN = 200000;  // elements: 200000 / 16 per packet = 12500 packets per rank
constexpr double kMu = 1.0;

// Each rank's contribution: uniform in [0, 2 mu), its own stream. Returns what rank 0 holds after
// an all-reduce (or, reduce_scatter, rank 0's block) under `spec`.
std::vector<float> reduce(const std::string& spec, bool scatter, std::vector<double>* exact = nullptr) {
  std::vector<std::vector<float>> out(kRanks);
  std::vector<std::vector<float>> in(kRanks, std::vector<float>(kN));
  for (int r = 0; r < kRanks; ++r) {
    std::mt19937 g(100 + r);
    std::uniform_real_distribution<float> u(0.0f, static_cast<float>(2 * kMu));
    for (float& x : in[r]) x = u(g);
  }
  if (exact) {
    exact->assign(kN, 0.0);
    for (int r = 0; r < kRanks; ++r)
      for (size_t i = 0; i < kN; ++i) (*exact)[i] += in[r][i];
  }
  lossytp::testing::on_ranks(kRanks, spec, [&](Comm& comm, int r) {
    comm.begin_step(0);
    if (scatter) {
      out[r].resize(kN / kRanks);
      comm.reduce_scatter(in[r].data(), out[r].data(), kN / kRanks, "layer0.mlp.fc2.fwd");
    } else {
      out[r] = in[r];
      comm.all_reduce(out[r].data(), kN, "layer0.mlp.fc2.fwd");
    }
  });
  return out[0];
}

double mean(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += x;
  return s / static_cast<double>(v.size());
}

}  // namespace

TEST_CASE("fill=count is an unbiased aggregate; fill=zero is not", "[fill_count][net]") {
  for (const char* mode : {"ring", "endpoint"})
    for (bool scatter : {false, true}) {
      INFO(mode << (scatter ? " reduce_scatter" : " all_reduce"));
      const std::string opts = std::string(",packet=64,scope=*,mode=") + mode;
      std::vector<double> exact;
      const std::vector<float> plain = reduce("exact", scatter, &exact);
      const size_t off = 0;  // rank 0's block starts at 0 for both collectives
      for (size_t i = 0; i < plain.size(); i += 997) CHECK(plain[i] == Approx(exact[off + i]).epsilon(1e-5));
      for (const char* enc : {"", ",encode=hadamard"}) {
        INFO(enc);
        const std::vector<float> count = reduce(std::string("drop:rate=0.2,fill=count") + enc + opts, scatter);
        const std::vector<float> zero = reduce(std::string("drop:rate=0.2,fill=zero") + enc + opts, scatter);
        // p mu = 4; the standard error of a mean over >= 50000 elements is well under 0.01
        CHECK(mean(count) == Approx(kRanks * kMu).epsilon(0.01));
        CHECK(mean(zero) < 0.95 * kRanks * kMu);
        bool finite = true;
        for (float x : count) finite = finite && std::isfinite(x);
        CHECK(finite);
      }
    }
}

TEST_CASE("fill=count parses, round-trips and names the fills in errors", "[fill_count][net]") {
  const net::NetSpec s = net::parse_net_spec("drop:rate=0.1,fill=count");
  CHECK(s.fill == net::Fill::Count);
  CHECK(net::parse_net_spec(s.describe()).fill == net::Fill::Count);
  try {
    net::parse_net_spec("drop:rate=0.1,fill=counts");
    FAIL("no error");
  } catch (const std::invalid_argument& e) {
    CHECK_THAT(e.what(), Catch::Contains("zero, rescale, local, stale, count"));
  }
}
