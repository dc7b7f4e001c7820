// The Comm layer over MPI: each collective's result and its per-site traffic accounting.
#include <catch2/catch.hpp>

#include <vector>

#include "mpi_helpers.h"
#include "sim/layout.h"
#include "sim/mpi_backend.h"

using namespace lossytp;
using namespace lossytp::testing;

static void check_collectives() {
  const int p = world_size(), r = world_rank();
  auto stats = std::make_shared<CommStats>();
  Comm comm(std::make_unique<MpiBackend>(MPI_COMM_WORLD), "tp", stats);
  REQUIRE(comm.size() == p);

  const size_t n = 10;
  std::vector<float> a(n);
  for (size_t i = 0; i < n; ++i) a[i] = static_cast<float>(r * 100 + i);
  comm.all_reduce(a.data(), n, "t.sum");
  for (size_t i = 0; i < n; ++i) CHECK(a[i] == Approx(100.0 * p * (p - 1) / 2 + p * i));

  std::vector<float> m(3, static_cast<float>(r));
  comm.all_reduce(m.data(), 3, "t.max", ReduceOp::Max);
  CHECK(m[0] == p - 1);

  std::vector<float> mine(4, static_cast<float>(r + 1)), all(4 * p);
  comm.all_gather(mine.data(), all.data(), 4, "t.gather");
  for (int q = 0; q < p; ++q) CHECK(all[4 * q + 3] == q + 1);

  std::vector<float> in(2 * p), out(2);
  for (int q = 0; q < p; ++q) in[2 * q] = in[2 * q + 1] = static_cast<float>(q + r);
  comm.reduce_scatter(in.data(), out.data(), 2, "t.rs");
  CHECK(out[0] == Approx(p * r + p * (p - 1) / 2.0));

  std::vector<float> b(5, r == 0 ? 42.0f : 0.0f);
  comm.broadcast(b.data(), 5, 0, "t.bcast");
  CHECK(b[4] == 42.0f);

  // Ring accounting: all-reduce of n floats = 2(p-1) messages of ceil(n/p) floats each.
  const auto& s = stats->sites();
  if (p > 1) {
    REQUIRE(s.count("t.sum") == 1);
    CHECK(s.at("t.sum").calls == 1);
    CHECK(s.at("t.sum").messages == 2 * (p - 1));
    CHECK(s.at("t.sum").bytes == 2 * (p - 1) * ((10 + p - 1) / p) * 4);
    CHECK(s.at("t.gather").bytes == (p - 1) * 4 * 4);
    CHECK(s.at("t.rs").messages == p - 1);
  } else {
    CHECK(s.count("t.sum") == 0);  // a group of one sends nothing
  }
}

TEST_CASE("collectives on one rank", "[np1]") { check_collectives(); }
TEST_CASE("collectives on two ranks", "[np2]") { check_collectives(); }
TEST_CASE("collectives on four ranks", "[np4]") { check_collectives(); }

TEST_CASE("layout puts TP fastest and splits groups Megatron's way", "[np4]") {
  Layout l = Layout::make(4, world_rank(), 2, 0);
  CHECK(l.dp == 2);
  CHECK(l.tp_rank == world_rank() % 2);
  CHECK(l.dp_rank == world_rank() / 2);
  auto g = make_mpi_groups(MPI_COMM_WORLD, l);
  CHECK(g->tp->size() == 2);
  CHECK(g->dp->size() == 2);
  CHECK(g->tp->rank() == l.tp_rank);
  // sum of world ranks within my TP group: ranks {2d, 2d+1}
  float x = static_cast<float>(world_rank());
  g->tp->all_reduce(&x, 1, "t");
  CHECK(x == 4 * l.dp_rank + 1);
  float y = static_cast<float>(world_rank());
  g->dp->all_reduce(&y, 1, "t");
  CHECK(y == 2 * l.tp_rank + 2);
}

TEST_CASE("impossible layouts are rejected with a message", "[np1]") {
  CHECK_THROWS_WITH(Layout::make(3, 0, 2, 0), Catch::Contains("not divisible"));
  CHECK_THROWS_WITH(Layout::make(4, 0, 2, 3), Catch::Contains("world size"));
  CHECK_THROWS(Layout::make(4, 0, 0, 0));
}
