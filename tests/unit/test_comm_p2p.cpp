// Point-to-point messages through the network model (pipeline parallelism): Comm::send / recv /
// wait_sends / exchange_add over two virtual ranks. The receiver draws the packet fates; every
// fill policy, reliable transport and bf16 wire apply as for the collectives.
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "netmodels/netmodel.h"
#include "sim/comm.h"
#include "sim/local_backend.h"
#include "sim/wire_precision.h"

using namespace lossytp;

namespace {

// Runs body(comm, rank) on two ranks of group "pp" (network `spec`, "" = none; seed 7) and
// rethrows the first failure.
template <typename F>
void on_pair(const std::string& spec, F body, bool bf16 = false) {
  std::shared_ptr<const net::NetSpec> net;
  if (!spec.empty()) net = std::make_shared<const net::NetSpec>(net::parse_net_spec(spec));
  LocalWorld world(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      try {
        Comm comm(world.group("pp", {0, 1}, r), "pp", nullptr);
        if (net) comm.set_network(net, 7);
        comm.set_wire_bf16(bf16);
        comm.begin_step(3);
        body(comm, r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) REQUIRE(e.empty());
}

// Distinct non-zero values, different for every message k.
std::vector<float> payload(size_t n, int k) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = 1.0f + static_cast<float>(k) * 10000.0f + static_cast<float>(i) * 0.37f;
  return v;
}

constexpr size_t kN = 1600;     // floats per message: 100 packets of 64 bytes
constexpr size_t kPerPacket = 16;
constexpr int kMessages = 50;

// Rank 0 sends kMessages messages (tags 0..) at "pp.fwd", rank 1 receives them: what arrived.
std::vector<std::vector<float>> lossy_run(const std::string& spec, SiteCounters* recv_counters = nullptr) {
  std::vector<std::vector<float>> got(kMessages, std::vector<float>(kN));
  on_pair(spec, [&](Comm& c, int r) {
    for (int k = 0; k < kMessages; ++k) {
      if (r == 0) c.send(payload(kN, k).data(), kN, 1, k, "pp.fwd");
      else c.recv(got[k].data(), kN, 0, k, "pp.fwd");
    }
    if (r == 0) c.wait_sends();
    if (r == 1 && recv_counters) *recv_counters = c.stats().site("pp.fwd");
  });
  return got;
}

}  // namespace

TEST_CASE("p2p, exact: bit-identical data, sender and receiver counters, link time", "[comm][p2p]") {
  const size_t n = 5000;  // 20000 bytes: 14 packets of 1448
  for (const char* spec : {"", "exact:latency=1e-5,bandwidth=1e9"}) {
    INFO(spec);
    const double latency = *spec ? 1e-5 : net::LinkParams{}.latency_s;
    const double bw = *spec ? 1e9 : net::LinkParams{}.bandwidth_Bps;
    const auto sent = payload(n, 1);
    std::vector<float> got(n);
    SiteCounters s, rc;
    double seconds = 0;
    on_pair(spec, [&](Comm& c, int r) {
      if (r == 0) {
        c.send(sent.data(), n, 1, 5, "pp.fwd");
        c.wait_sends();
        s = c.stats().site("pp.fwd");
      } else {
        seconds = c.recv(got.data(), n, 0, 5, "pp.fwd");
        rc = c.stats().site("pp.fwd");
      }
    });
    CHECK(got == sent);
    CHECK(s.calls == 1);
    CHECK(s.messages == 1);
    CHECK(s.bytes == static_cast<int64_t>(4 * n));
    CHECK(s.packets == 0);
    CHECK(rc.messages == 0);
    CHECK(rc.packets == 14);
    CHECK(rc.packets_exposed == 0);
    CHECK(rc.packets_lost == 0);
    CHECK(seconds == Approx(latency + 4.0 * n / bw));
    CHECK(rc.sim_seconds == Approx(seconds));
  }
}

TEST_CASE("p2p, drop 0.3 fill=zero: ~30% of packets lost, lost elements 0, the rest exact", "[comm][p2p]") {
  const std::string spec = "drop:rate=0.3,packet=64,scope=pp";
  SiteCounters c;
  const auto got = lossy_run(spec, &c);
  size_t lost_packets = 0;
  for (int k = 0; k < kMessages; ++k) {
    const auto sent = payload(kN, k);
    for (size_t p = 0; p < kN / kPerPacket; ++p) {
      const bool lost = got[k][p * kPerPacket] == 0.0f;
      lost_packets += lost;
      for (size_t i = p * kPerPacket; i < (p + 1) * kPerPacket; ++i) REQUIRE(got[k][i] == (lost ? 0.0f : sent[i]));
    }
  }
  const size_t packets = kMessages * kN / kPerPacket;
  CHECK(c.packets == static_cast<int64_t>(packets));
  CHECK(c.packets_exposed == static_cast<int64_t>(packets));
  CHECK(c.packets_lost == static_cast<int64_t>(lost_packets));
  CHECK(c.elements_filled == static_cast<int64_t>(lost_packets * kPerPacket));
  CHECK(static_cast<double>(lost_packets) / packets == Approx(0.3).margin(0.03));
  // same seed: the same fates; fill=local loses the same packets and also gives 0
  CHECK(lossy_run(spec) == got);
  CHECK(lossy_run("drop:rate=0.3,packet=64,scope=pp,fill=local") == got);
  // another tag (call): other fates for the same data
  std::vector<float> a(kN), b(kN);
  on_pair(spec, [&](Comm& cm, int r) {
    const auto x = payload(kN, 0);
    if (r == 0) {
      cm.send(x.data(), kN, 1, 100, "pp.fwd");
      cm.send(x.data(), kN, 1, 101, "pp.fwd");
      cm.wait_sends();
    } else {
      cm.recv(a.data(), kN, 0, 100, "pp.fwd");
      cm.recv(b.data(), kN, 0, 101, "pp.fwd");
    }
  });
  CHECK(a != b);
  // out of scope: nothing lost, nothing exposed
  SiteCounters out;
  const auto exact = lossy_run("drop:rate=0.3,packet=64,scope=tp.fwd", &out);
  for (int k = 0; k < kMessages; ++k) CHECK(exact[k] == payload(kN, k));
  CHECK(out.packets_lost == 0);
  CHECK(out.packets_exposed == 0);
}

TEST_CASE("p2p, fill=stale: a lost element is the last value that arrived there", "[comm][p2p]") {
  SiteCounters c;
  const auto got = lossy_run("drop:rate=0.3,packet=64,scope=pp,fill=stale", &c);
  std::vector<float> last(kN, 0.0f);
  size_t stale_nonzero = 0;
  for (int k = 0; k < kMessages; ++k) {
    const auto sent = payload(kN, k);
    for (size_t i = 0; i < kN; ++i) {
      if (got[k][i] == sent[i]) {
        last[i] = sent[i];
      } else {
        REQUIRE(got[k][i] == last[i]);
        stale_nonzero += last[i] != 0.0f;
      }
    }
  }
  CHECK(c.packets_lost > 0);
  CHECK(stale_nonzero > 0);
}

TEST_CASE("p2p, fill=rescale: delivered elements scaled by 1/(1-p), lost ones 0", "[comm][p2p]") {
  const auto got = lossy_run("drop:rate=0.3,packet=64,scope=pp,fill=rescale");
  const float s = static_cast<float>(1.0 / (1.0 - 0.3));
  size_t lost = 0;
  for (int k = 0; k < kMessages; ++k) {
    const auto sent = payload(kN, k);
    for (size_t i = 0; i < kN; ++i) {
      if (got[k][i] == 0.0f) ++lost;
      else REQUIRE(got[k][i] == sent[i] * s);
    }
  }
  CHECK(lost > 0);
}

TEST_CASE("p2p, transport=reliable: exact data, retransmissions and their time counted", "[comm][p2p]") {
  SiteCounters c;
  const auto got = lossy_run("drop:rate=0.3,packet=64,scope=pp,transport=reliable", &c);
  for (int k = 0; k < kMessages; ++k) REQUIRE(got[k] == payload(kN, k));
  const net::LinkParams link;
  CHECK(c.packets == static_cast<int64_t>(kMessages * kN / kPerPacket));
  CHECK(c.packets_lost == 0);
  CHECK(c.elements_filled == 0);
  CHECK(c.retransmissions > 0);
  CHECK(c.sim_seconds > kMessages * (link.latency_s + 4.0 * kN / link.bandwidth_Bps + link.timeout_s));
}

TEST_CASE("p2p, bf16 wire: the payload is rounded and counted with 2 bytes", "[comm][p2p]") {
  const size_t n = 1000;
  const auto sent = payload(n, 3);
  auto rounded = sent;
  round_to_bf16(Device::CPU, rounded.data(), n);
  REQUIRE(rounded != sent);
  std::vector<float> got(n);
  SiteCounters s, rc;
  on_pair("", [&](Comm& c, int r) {
    if (r == 0) {
      c.send(sent.data(), n, 1, 0, "pp.fwd");
      c.wait_sends();
      s = c.stats().site("pp.fwd");
    } else {
      c.recv(got.data(), n, 0, 0, "pp.fwd");
      rc = c.stats().site("pp.fwd");
    }
  }, true);
  CHECK(got == rounded);
  CHECK(s.bytes == static_cast<int64_t>(2 * n));
  CHECK(rc.packets == 2);  // 2000 bytes, 1450 per packet
}

TEST_CASE("p2p, exchange_add: both ranks end with a + b, bit-identical", "[comm][p2p]") {
  const size_t n = 3001;
  const auto a = payload(n, 1), b = payload(n, 2);
  for (bool bf16 : {false, true}) {
    INFO("bf16 " << bf16);
    std::vector<std::vector<float>> out = {a, b};
    on_pair("", [&](Comm& c, int r) {
      c.exchange_add(out[r].data(), n, 1 - r, 9, "pp.embed.grad");
      c.wait_sends();
    }, bf16);
    CHECK(out[0] == out[1]);
    if (!bf16)
      for (size_t i = 0; i < n; ++i) REQUIRE(out[0][i] == a[i] + b[i]);
  }
  // lossy (fill=zero): a lost packet leaves the rank with its own term there
  std::vector<std::vector<float>> out = {a, b};
  on_pair("drop:rate=0.3,packet=64,scope=pp", [&](Comm& c, int r) {
    c.exchange_add(out[r].data(), n, 1 - r, 9, "pp.embed.grad");
    c.wait_sends();
    if (c.stats().site("pp.embed.grad").packets_lost == 0) throw std::runtime_error("nothing lost");
  });
  for (int r = 0; r < 2; ++r) {
    const auto& own = r == 0 ? a : b;
    for (size_t i = 0; i < n; ++i) REQUIRE((out[r][i] == own[i] || out[r][i] == a[i] + b[i]));
  }
}

TEST_CASE("p2p: many sends before any receive complete, in any receive order", "[comm][p2p]") {
  const size_t n = 2048;
  const int m = 8;
  std::vector<std::vector<std::vector<float>>> got(2, std::vector<std::vector<float>>(m, std::vector<float>(n)));
  on_pair("drop:rate=0.1,scope=tp.fwd", [&](Comm& c, int r) {
    for (int step = 0; step < 2; ++step) {  // the second step reuses the send buffers
      for (int k = 0; k < m; ++k) c.send(payload(n, 10 * r + k + step).data(), n, 1 - r, k, "pp.bwd");
      for (int k = m - 1; k >= 0; --k) c.recv(got[r][k].data(), n, 1 - r, k, "pp.bwd");
      c.wait_sends();
    }
  });
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < m; ++k) CHECK(got[r][k] == payload(n, 10 * (1 - r) + k + 1));
}

TEST_CASE("p2p: not inside a recorded forward; a timeout names the site", "[comm][p2p]") {
  LocalWorld world(2);
  Comm c(world.group("pp", {0, 1}, 0), "pp", nullptr);
  CollectiveTape tape;
  std::vector<float> x(4, 1.0f);
  c.record(tape);
  CHECK_THROWS_AS(c.recv(x.data(), 4, 1, 0, "pp.fwd"), std::logic_error);
  CHECK_THROWS_AS(c.send(x.data(), 4, 1, 0, "pp.fwd"), std::logic_error);
  CHECK_THROWS_AS(c.exchange_add(x.data(), 4, 1, 0, "pp.embed.grad"), std::logic_error);
  c.stop_tape();
  c.backend().set_timeout(0.05);
  try {
    c.recv(x.data(), 4, 1, 0, "pp.bwd");
    FAIL("no timeout");
  } catch (const CommTimeout& e) {
    CHECK(std::string(e.what()).find("pp.bwd") != std::string::npos);
  }
}
