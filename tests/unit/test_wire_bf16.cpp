// Wire precision (Comm::set_wire_bf16, sim/wire_precision.h): payloads travel as bf16 on every
// path (ring hops, native, endpoint) and are counted with 2 bytes per element.
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kernels/bf16.h"
#include "netmodels/netmodel.h"
#include "sim/comm.h"
#include "sim/local_backend.h"
#include "sim/wire_precision.h"

using namespace lossytp;

namespace {

// Varied values that are not bf16 (7 explicit mantissa bits).
std::vector<float> values(size_t n, int rank) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = (1.0f + 0.0123457f * static_cast<float>((i * 7 + rank * 13) % 97)) * (i % 2 ? -1.0f : 3.0f);
  return v;
}

bool is_bf16(float x) { return bf16_round(x) == x; }

// Runs body(rank, comm) on p virtual ranks, each with a Comm of group "tp" (wire_bf16 on unless
// told), and rethrows the first failure.
template <typename F>
void on_ranks(int p, F body, bool bf16 = true) {
  LocalWorld world(p);
  std::vector<std::string> errors(p);
  std::vector<std::thread> threads;
  for (int r = 0; r < p; ++r)
    threads.emplace_back([&, r] {
      try {
        std::vector<int> members;
        for (int i = 0; i < p; ++i) members.push_back(i);
        Comm comm(world.group("tp", members, r), "tp", nullptr);
        comm.set_wire_bf16(bf16);
        body(r, comm);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) REQUIRE(e.empty());
}

}  // namespace

TEST_CASE("bf16 rounding: nearest, ties to even, on the CPU", "[bf16][wire]") {
  std::vector<float> x = {1.0f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-7f + 0x1p-12f, -2.5f, 0.0f,
                          3.4e38f, 1e-40f};
  round_to_bf16(Device::CPU, x.data(), x.size());
  CHECK(x[0] == 1.0f);
  CHECK(x[1] == 1.0f);                 // a tie: to the even mantissa
  CHECK(x[2] == 1.0f + 0x1p-6f);       // a tie: to the even mantissa, up
  CHECK(x[3] == 1.0f + 0x1p-7f);       // below half: down
  CHECK(x[4] == -2.5f);                // already bf16
  CHECK(x[5] == 0.0f);
  CHECK(std::isinf(x[6]));             // past the largest bf16
  CHECK(is_bf16(x[7]));
  for (float v : values(1000, 3)) {
    float r = v;
    round_to_bf16(Device::CPU, &r, 1);
    CHECK(r == bf16_round(v));
    CHECK(std::abs(r - v) <= std::abs(v) * 0x1p-8f);
  }
  CHECK(wire_elem_bytes(true) == 2);
  CHECK(wire_elem_bytes(false) == 4);
}

TEST_CASE("bf16 on the wire halves the bytes counted, packets of 2-byte elements", "[bf16][wire]") {
  const int p = 2;
  const size_t n = 10000;
  const net::NetSpec exact{};
  std::vector<SiteCounters> fp32(p), bf16(p);
  for (bool on : {false, true})
    on_ranks(
        p,
        [&](int r, Comm& comm) {
          auto x = values(n, r);
          comm.all_reduce(x.data(), n, "a.fwd");
          (on ? bf16 : fp32)[r] = comm.stats().sites().at("a.fwd");
        },
        on);
  for (int r = 0; r < p; ++r) {
    CHECK(fp32[r].messages == bf16[r].messages);
    CHECK(fp32[r].bytes == 2 * bf16[r].bytes);
    CHECK(bf16[r].bytes == 2 * (n / 2) * 2);  // 2 hops of n/2 elements of 2 bytes
    CHECK(fp32[r].packets == 2 * static_cast<int64_t>(exact.packet_count(n / 2 * 4, 4)));
    CHECK(bf16[r].packets == 2 * static_cast<int64_t>(exact.packet_count(n / 2 * 2, 2)));
    CHECK(bf16[r].packets == 2 * 7);  // 10000 bytes in 1450-byte packets of 725 elements
    CHECK(bf16[r].sim_seconds < fp32[r].sim_seconds);
  }
}

TEST_CASE("a ring all-reduce with bf16 on the wire gives the bf16-rounded sums", "[bf16][wire]") {
  const int p = 2;
  const size_t n = 1001;
  std::vector<std::vector<float>> in(p), out(p);
  std::vector<SiteCounters> c(p);
  for (int r = 0; r < p; ++r) in[r] = values(n, r);
  on_ranks(p, [&](int r, Comm& comm) {
    auto x = in[r];
    comm.all_reduce_as_ring(x.data(), n, "ring.fwd");
    out[r] = x;
    c[r] = comm.stats().sites().at("ring.fwd");
  });
  // Chunk 0 leaves rank 0 as bf16 and is summed on rank 1 (and the other way round for chunk 1);
  // each sum is rounded before it travels on.
  const size_t half = n / 2;
  for (size_t i = 0; i < n; ++i) {
    const float expect = i < half ? bf16_round(in[1][i] + bf16_round(in[0][i]))
                                  : bf16_round(in[0][i] + bf16_round(in[1][i]));
    CHECK(out[0][i] == expect);
    CHECK(out[1][i] == expect);
  }
  // with inputs that are bf16 already: exactly the bf16-rounded sums
  for (int r = 0; r < p; ++r) round_to_bf16(Device::CPU, in[r].data(), n);
  on_ranks(p, [&](int r, Comm& comm) {
    auto x = in[r];
    comm.all_reduce_as_ring(x.data(), n, "ring.fwd");
    out[r] = x;
  });
  for (size_t i = 0; i < n; ++i) {
    CHECK(out[0][i] == bf16_round(in[0][i] + in[1][i]));
    CHECK(out[1][i] == out[0][i]);
  }
  // per rank: hop 0 receives the other half's chunk, hop 1 its own chunk back
  const net::NetSpec exact{};
  for (int r = 0; r < p; ++r) {
    const size_t recv0 = r == 0 ? n - half : half, recv1 = r == 0 ? half : n - half;
    CHECK(c[r].bytes == static_cast<int64_t>(2 * n));  // every element sent once, 2 bytes each
    CHECK(c[r].packets == static_cast<int64_t>(exact.packet_count(recv0 * 2, 2) + exact.packet_count(recv1 * 2, 2)));
  }
}

TEST_CASE("a lossy ring with bf16: results are bf16, packets hold 2-byte elements", "[bf16][wire]") {
  const int p = 4;
  const size_t n = 1000;  // chunks of 250 elements, 500 bytes: 8 packets of 32 elements each
  auto spec = std::make_shared<const net::NetSpec>(net::parse_net_spec("drop:rate=0.2,packet=64,scope=*"));
  std::vector<std::vector<float>> out(p), gathered(p), scattered(p);
  std::vector<SiteCounters> c(p);
  on_ranks(p, [&](int r, Comm& comm) {
    comm.set_network(spec, 3);
    auto x = values(n, r);
    comm.all_reduce(x.data(), n, "ar.fwd");
    out[r] = x;
    c[r] = comm.stats().sites().at("ar.fwd");
    auto mine = values(n / p, r + 10);
    std::vector<float> all(n);
    comm.all_gather(mine.data(), all.data(), n / p, "ag.fwd");
    gathered[r] = all;
    std::vector<float> rs(n / p);
    comm.reduce_scatter(values(n, r + 20).data(), rs.data(), n / p, "rs.fwd");
    scattered[r] = rs;
  });
  int64_t lost = 0;
  for (int r = 0; r < p; ++r) {
    for (float v : out[r]) CHECK(is_bf16(v));
    for (float v : gathered[r]) CHECK(is_bf16(v));
    for (float v : scattered[r]) CHECK(is_bf16(v));
    CHECK(c[r].messages == 2 * (p - 1));
    CHECK(c[r].bytes == 2 * (p - 1) * 250 * 2);
    CHECK(c[r].packets == 2 * (p - 1) * 8);
    // a lost packet fills whole 32-element packets (250 = 7 * 32 + 26: the last is short)
    CHECK(c[r].elements_filled <= c[r].packets_lost * 32);
    CHECK(c[r].elements_filled >= c[r].packets_lost * 26);
    lost += c[r].packets_lost;
  }
  CHECK(lost > 0);
}

TEST_CASE("native and endpoint paths with bf16: contributions and results rounded", "[bf16][wire]") {
  const int p = 2;
  const size_t n = 1000;
  std::vector<std::vector<float>> in(p), sum(p), gathered(p), scattered(p), masked(p);
  std::vector<SiteCounters> endpoint(p);
  for (int r = 0; r < p; ++r) in[r] = values(n, r);
  auto spec = std::make_shared<const net::NetSpec>(
      net::parse_net_spec("drop:rate=0.3,packet=64,scope=masked.*,mode=endpoint"));
  on_ranks(p, [&](int r, Comm& comm) {
    comm.set_network(spec, 9);  // only the "masked.*" sites are in scope: the rest is native
    auto x = in[r];
    comm.all_reduce(x.data(), n, "sum");
    sum[r] = x;
    std::vector<float> all(n * p);
    const std::vector<float> mine = in[r];
    comm.all_gather(mine.data(), all.data(), n, "gather");
    if (mine != in[r]) throw std::runtime_error("all_gather changed its const input");
    gathered[r] = all;
    std::vector<float> rs(n / p);
    comm.reduce_scatter(in[r].data(), rs.data(), n / p, "scatter");
    scattered[r] = rs;
    auto y = in[r];
    comm.all_reduce(y.data(), n, "masked.sum");
    masked[r] = y;
    endpoint[r] = comm.stats().sites().at("masked.sum");
  });
  for (int r = 0; r < p; ++r) {
    for (size_t i = 0; i < n; ++i) {
      CHECK(sum[r][i] == bf16_round(bf16_round(in[0][i]) + bf16_round(in[1][i])));
      for (int q = 0; q < p; ++q) CHECK(gathered[r][q * n + i] == bf16_round(in[q][i]));
      CHECK(is_bf16(masked[r][i]));
    }
    for (size_t i = 0; i < n / p; ++i) {
      const size_t k = r * (n / p) + i;
      CHECK(scattered[r][i] == bf16_round(bf16_round(in[0][k]) + bf16_round(in[1][k])));
    }
    // endpoint: this rank's contribution of 1000 2-byte elements in 64-byte packets
    const net::NetSpec& s = *spec;
    CHECK(endpoint[r].packets == static_cast<int64_t>(s.packet_count(n * 2, 2)));
    CHECK(endpoint[r].packets == 32);
    CHECK(endpoint[r].packets_lost > 0);
    CHECK(endpoint[r].bytes == 2 * (p - 1) * (n / p) * 2);
  }
}

TEST_CASE("wire bf16: the cross-entropy statistics stay fp32", "[bf16][wire]") {
  const size_t n = 64;
  // Per-rank outcomes, checked after the threads end (Catch2's assertions are not thread-safe).
  std::vector<int> ce_exact_of(2), act_bf16_of(2);
  std::vector<int64_t> ce_bytes_of(2);
  on_ranks(2, [&](int r, Comm& comm) {
    std::vector<float> ce = values(n, r), act = values(n, r);
    comm.all_reduce(ce.data(), n, "ce.sumexp");
    comm.all_reduce(act.data(), n, "layer0.attn.proj.fwd");
    const std::vector<float> a = values(n, 0), b = values(n, 1);
    bool ce_exact = true, act_bf16 = true;
    for (size_t i = 0; i < n; ++i) {
      ce_exact = ce_exact && ce[i] == a[i] + b[i];
      act_bf16 = act_bf16 && is_bf16(act[i]);
    }
    ce_exact_of[r] = ce_exact;
    act_bf16_of[r] = act_bf16;
    ce_bytes_of[r] = comm.stats().site("ce.sumexp").bytes;
  });
  for (int r = 0; r < 2; ++r) {
    CHECK(ce_exact_of[r]);
    CHECK(act_bf16_of[r]);
    CHECK(ce_bytes_of[r] == 2 * static_cast<int64_t>(n / 2 * sizeof(float)));
  }
}
