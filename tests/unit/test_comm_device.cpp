// The communication layer's device plumbing, on the CPU: device buffers, a Comm's device taken
// from its backend, scratch and stale values reused across calls of different sizes without
// changing a result. (The same code on CUDA buffers: tests/gpu/test_cuda_comm.cpp.)
#include <catch2/catch.hpp>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "netmodels/netmodel.h"
#include "sim/comm.h"
#include "sim/device_buffer.h"
#include "sim/layout.h"
#include "sim/local_backend.h"
#include "sim/ring_collectives.h"

using namespace lossytp;

namespace {

std::vector<float> ramp(size_t n, float scale, float offset) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = offset + scale * static_cast<float>((i * 37) % 101) / 7.0f;
  return v;
}

// Runs body(rank) on p threads and rethrows the first failure.
template <typename F>
void on_ranks(int p, F body) {
  std::vector<std::string> errors(p);
  std::vector<std::thread> threads;
  for (int r = 0; r < p; ++r)
    threads.emplace_back([&, r] {
      try {
        body(r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) REQUIRE(e.empty());
}

}  // namespace

TEST_CASE("device buffers: zeroed, grown keeping their contents, moved", "[comm][device]") {
  DeviceBuffer b(Device::CPU, 10 * sizeof(float));
  CHECK(b.device() == Device::CPU);
  REQUIRE(b.bytes() >= 10 * sizeof(float));
  CHECK(reinterpret_cast<uintptr_t>(b.data()) % 64 == 0);
  for (int i = 0; i < 10; ++i) CHECK(b.floats()[i] == 0.0f);
  for (int i = 0; i < 10; ++i) b.floats()[i] = static_cast<float>(i + 1);
  float* same = b.floats(5);  // large enough: nothing moves
  CHECK(same == b.floats());
  float* grown = b.floats(1000, true);
  REQUIRE(b.bytes() >= 1000 * sizeof(float));
  for (int i = 0; i < 10; ++i) CHECK(grown[i] == static_cast<float>(i + 1));
  for (int i = 10; i < 1000; ++i) CHECK(grown[i] == 0.0f);
  DeviceBuffer moved = std::move(b);
  CHECK(moved.floats() == grown);
  CHECK(b.data() == nullptr);
  CHECK(b.bytes() == 0);
  float src[3] = {1, 2, 3}, dst[3] = {};
  copy_bytes(Device::CPU, dst, src, sizeof src);
  CHECK(dst[2] == 3.0f);
}

TEST_CASE("a Comm works on its backend's device and refuses another", "[comm][device]") {
  LocalWorld world(1);
  CHECK(world.device() == Device::CPU);
  Comm comm(world.group("t", {0}, 0), "tp", nullptr);
  CHECK(comm.backend().device() == Device::CPU);
  CHECK(comm.device() == Device::CPU);
  comm.set_device(Device::CPU);
  try {
    comm.set_device(Device::CUDA);
    FAIL("set_device(CUDA) on a CPU backend must throw");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("local backend moves cpu buffers, not cuda") != std::string::npos);
  }
  auto g = make_local_groups(world, Layout::make(1, 0, 1, 1));
  CHECK(g->tp->device() == Device::CPU);
  CHECK(g->dp->device() == Device::CPU);
#ifndef LOSSYTP_HAVE_CUDA
  CHECK_THROWS_AS(LocalWorld(2, Device::CUDA), std::runtime_error);
#endif
}

TEST_CASE("apply_delivery_on the CPU is apply_delivery", "[comm][device]") {
  net::DeliveryPlan plan;
  plan.packet_bytes = 8;
  plan.packets = 3;
  plan.lost = 1;
  plan.lost_mask = {0, 1, 0};
  const std::vector<float> recv = {1, 2, 3, 4, 5};
  std::vector<float> a = {10, 20, 30, 40, 50}, b = a;
  DeviceBuffer mask(Device::CPU, 0);
  CHECK(apply_delivery_on(Device::CPU, a.data(), recv.data(), 5, plan, net::Fill::Zero, true,
                          ReduceOp::Sum, 1.0f, nullptr, mask) == 2);
  CHECK(apply_delivery(b.data(), recv.data(), 5, plan, net::Fill::Zero, true, ReduceOp::Sum, 1.0f,
                       nullptr) == 2);
  CHECK(a == b);
  CHECK(a == std::vector<float>{11, 22, 30, 40, 55});
}

TEST_CASE("reused scratch gives the results of fresh scratch", "[comm][device]") {
  // One Comm through calls of changing sizes (its scratch grows and is reused) against a fresh
  // Comm for every size: the same masks (same site, iteration, call), the same results.
  const int p = 3;
  const std::vector<size_t> sizes = {1000, 10, 3000, 1000};
  for (const char* text : {"drop:rate=0.3,packet=64,scope=*", "drop:rate=0.3,packet=64,scope=*,mode=endpoint"}) {
    INFO(text);
    auto net = std::make_shared<const net::NetSpec>(net::parse_net_spec(text));
    LocalWorld world(p);
    std::vector<std::vector<float>> reused(p), fresh(p);
    on_ranks(p, [&](int r) {
      Comm one(world.group("one", {0, 1, 2}, r), "tp", nullptr);
      one.set_network(net, 5);
      for (size_t k = 0; k < sizes.size(); ++k) {
        one.begin_step(static_cast<int64_t>(k));
        Comm each(world.group("each" + std::to_string(k), {0, 1, 2}, r), "tp", nullptr);
        each.set_network(net, 5);
        each.begin_step(static_cast<int64_t>(k));
        const size_t n = sizes[k];
        auto x = ramp(n, 1.0f + r, static_cast<float>(k)), y = x;
        one.all_reduce(x.data(), n, "s.fwd");
        each.all_reduce(y.data(), n, "s.fwd");
        std::vector<float> gx(n * p), gy(n * p);
        one.all_gather(x.data(), gx.data(), n, "g.fwd");
        each.all_gather(y.data(), gy.data(), n, "g.fwd");
        std::vector<float> rx(n), ry(n);
        one.reduce_scatter(gx.data(), rx.data(), n, "r.fwd");
        each.reduce_scatter(gy.data(), ry.data(), n, "r.fwd");
        reused[r].insert(reused[r].end(), rx.begin(), rx.end());
        fresh[r].insert(fresh[r].end(), ry.begin(), ry.end());
      }
      if (one.stats().total().packets_lost == 0) throw std::runtime_error("nothing was lost");
    });
    for (int r = 0; r < p; ++r) CHECK(reused[r] == fresh[r]);
  }
}

TEST_CASE("stale values: zero at first, kept when a site's buffer grows", "[comm][device]") {
  StaleStore s;
  float* a = s.get("x.fwd", 0, 4);
  for (int i = 0; i < 4; ++i) CHECK(a[i] == 0.0f);
  for (int i = 0; i < 4; ++i) a[i] = static_cast<float>(i + 1);
  float* b = s.get("x.fwd", 0, 1000);
  for (int i = 0; i < 4; ++i) CHECK(b[i] == static_cast<float>(i + 1));
  for (int i = 4; i < 1000; ++i) CHECK(b[i] == 0.0f);
  CHECK(s.get("x.fwd", 1, 4)[0] == 0.0f);  // another phase, another buffer
  CHECK(s.get("x.fwd", 0, 4)[3] == 4.0f);
}
