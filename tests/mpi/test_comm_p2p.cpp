// Point-to-point messages of the Comm over MPI (pipeline parallelism): isends are non-blocking,
// so two ranks that send large messages to each other before receiving do not deadlock.
#include <catch2/catch.hpp>

#include <memory>
#include <vector>

#include "mpi_helpers.h"
#include "sim/comm.h"
#include "sim/mpi_backend.h"

using namespace lossytp;
using namespace lossytp::testing;

TEST_CASE("p2p over MPI: both ranks isend 8 MB messages before receiving", "[np2]") {
  const int r = world_rank(), peer = 1 - r;
  Comm comm(std::make_unique<MpiBackend>(MPI_COMM_WORLD), "pp", nullptr);
  const size_t n = size_t(2) << 20;  // 8 MB of floats: far beyond any eager limit
  const int m = 3;
  auto value = [](int from, int k, size_t i) { return static_cast<float>(from * 1000 + k) + static_cast<float>(i % 4099) * 0.25f; };
  std::vector<std::vector<float>> out(m, std::vector<float>(n)), in(m, std::vector<float>(n));
  // without a timeout (MPI_Waitall) and with one (the polling wait)
  for (double timeout : {0.0, 120.0}) {
    comm.backend().set_timeout(timeout);
    for (int k = 0; k < m; ++k) {
      for (size_t i = 0; i < n; ++i) out[k][i] = value(r, k, i);
      comm.send(out[k].data(), n, peer, 20 + k, "pp.fwd");
      out[k].assign(n, -1.0f);  // the Comm sends its own copy
    }
    double seconds = 0;
    for (int k = m - 1; k >= 0; --k) seconds += comm.recv(in[k].data(), n, peer, 20 + k, "pp.fwd");
    comm.wait_sends();
    for (int k = 0; k < m; ++k)
      for (size_t i = 0; i < n; ++i) REQUIRE(in[k][i] == value(peer, k, i));
    CHECK(seconds > 0.0);
  }
  const SiteCounters& c = comm.stats().site("pp.fwd");
  CHECK(c.messages == 2 * m);
  CHECK(c.bytes == static_cast<int64_t>(2 * m * n * 4));
  CHECK(c.packets > 0);
}
