// The communication layer on device buffers: virtual ranks on one GPU (LocalWorld(p, CUDA))
// give bit for bit the results of virtual ranks on the CPU, for the backends' collectives and
// point-to-point messages and for Comm's native, ring and endpoint paths under lossy network
// models (same masks, same counters). The NCCL groups of one rank build and move device memory.
#include <catch2/catch.hpp>

#include <mpi.h>

#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <stdexcept>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/ops.h"
#include "kernels/philox.h"
#include "netmodels/netmodel.h"
#include "sim/comm.h"
#include "sim/layout.h"
#include "sim/local_backend.h"
#include "sim/tensor.h"
#include "sim/wire_precision.h"

using namespace lossytp;

namespace {

// Values of a few magnitudes, so the order of additions shows in the bits.
std::vector<float> values(size_t n, uint64_t stream) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = philox_normal(7, stream, i) * (1.0f + static_cast<float>(i % 5) * 100.0f);
  return v;
}

// A host vector on `dev` (a Tensor, so the same code runs on both devices).
Tensor on(Device dev, const std::vector<float>& h) {
  Tensor t({static_cast<int64_t>(std::max<size_t>(h.size(), 1))}, dev);
  if (!h.empty()) t.copy_from_host(h.data());
  return t;
}

std::vector<float> host(const Tensor& t, size_t n) {
  std::vector<float> h(n);
  if (n) t.flat(0, n, {static_cast<int64_t>(n)}).copy_to_host(h.data());
  return h;
}

// Runs body(rank) on p threads (no Catch assertions in them: Catch is not thread-safe); fails
// the test on any exception.
void on_ranks(int p, const std::function<void(int)>& body) {
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
  for (int r = 0; r < p; ++r) {
    INFO("rank " << r);
    CHECK(errors[r].empty());
    if (!errors[r].empty()) WARN(errors[r]);
  }
}

std::vector<int> iota(int p) {
  std::vector<int> m(p);
  for (int i = 0; i < p; ++i) m[i] = i;
  return m;
}

// What every rank ended up with, and its counters.
struct Outcome {
  std::vector<std::vector<float>> data;  // per rank, every result concatenated
  std::vector<std::map<std::string, SiteCounters>> sites;
};

// Every collective of Comm, three iterations (stale values carry over), on p virtual ranks of
// `dev`, under `spec` (empty: exact), fp32 or bf16 on the wire.
Outcome exercise(int p, Device dev, const std::string& spec, bool bf16) {
  LocalWorld world(p, dev);
  Outcome o;
  o.data.resize(p);
  o.sites.resize(p);
  std::shared_ptr<const net::NetSpec> net;
  if (!spec.empty()) net = std::make_shared<const net::NetSpec>(net::parse_net_spec(spec));
  on_ranks(p, [&](int r) {
    Comm comm(world.group("tp", iota(p), r), "tp", nullptr);
    if (comm.device() != dev) throw std::runtime_error("the Comm is not on the world's device");
    comm.backend().set_timeout(120);
    comm.set_wire_bf16(bf16);
    if (net) comm.set_network(net, 1234);
    std::vector<float>& out = o.data[r];
    auto keep = [&](const Tensor& t, size_t n) {
      auto h = host(t, n);
      out.insert(out.end(), h.begin(), h.end());
    };
    const size_t n = 1001, m = 333;
    for (int it = 0; it < 3; ++it) {
      comm.begin_step(it);
      const uint64_t s = 100 * it + 10 * r;
      Tensor a = on(dev, values(n, s + 1));
      comm.all_reduce(a.data(), n, "ar.fwd");
      keep(a, n);
      Tensor mx = on(dev, values(n, s + 2));
      comm.all_reduce(mx.data(), n, "max.fwd", ReduceOp::Max);
      keep(mx, n);
      Tensor ring = on(dev, values(n, s + 3));
      comm.all_reduce_as_ring(ring.data(), n, "ring.fwd");
      keep(ring, n);
      Tensor g_in = on(dev, values(m, s + 4)), g_out = on(dev, std::vector<float>(m * p, -1.0f));
      comm.all_gather(g_in.data(), g_out.data(), m, "ag.fwd");
      keep(g_out, m * p);
      Tensor rs_in = on(dev, values(m * p, s + 5)), rs_out = on(dev, std::vector<float>(m, -1.0f));
      comm.reduce_scatter(rs_in.data(), rs_out.data(), m, "rs.fwd");
      keep(rs_out, m);
      Tensor b = on(dev, values(n, s + 6));
      comm.broadcast(b.data(), n, p - 1, "bcast");
      keep(b, n);
    }
    o.sites[r] = comm.stats().sites();
  });
  return o;
}

void check_same_counters(const SiteCounters& a, const SiteCounters& b) {
  CHECK(a.calls == b.calls);
  CHECK(a.messages == b.messages);
  CHECK(a.bytes == b.bytes);
  CHECK(a.packets == b.packets);
  CHECK(a.packets_exposed == b.packets_exposed);
  CHECK(a.packets_lost == b.packets_lost);
  CHECK(a.retransmissions == b.retransmissions);
  CHECK(a.elements_filled == b.elements_filled);
  CHECK(a.sim_seconds == b.sim_seconds);
}

size_t bit_differences(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  size_t d = 0;
  for (size_t i = 0; i < a.size(); ++i) d += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return d;
}

}  // namespace

TEST_CASE("device tensors: zero, fill, and copies between devices", "[gpu][comm]") {
  std::vector<float> h = values(37, 1);
  Tensor d = on(Device::CUDA, h);
  Tensor dd = d.clone();  // device to device
  CHECK(dd.device() == Device::CUDA);
  CHECK(dd.data() != d.data());
  CHECK(host(dd, 37) == h);
  d.fill(-3.0f);
  CHECK(host(d, 37) == std::vector<float>(37, -3.0f));
  CHECK(host(dd, 37) == h);  // the clone has its own storage
  dd.slice(10, 20).zero();
  auto z = host(dd, 37);
  for (int i = 0; i < 37; ++i) CHECK(z[i] == (i >= 10 && i < 20 ? 0.0f : h[i]));
}

TEST_CASE("virtual ranks on the GPU: backend collectives equal the CPU's bit for bit", "[gpu][comm]") {
  for (int p : {2, 4}) {
    INFO("p = " << p);
    const size_t n = 777, m = 129;
    std::map<Device, std::vector<std::vector<float>>> got;
    std::map<Device, std::vector<double>> f64;
    for (Device dev : {Device::CPU, Device::CUDA}) {
      LocalWorld world(p, dev);
      got[dev].resize(p);
      f64[dev].resize(p);
      on_ranks(p, [&](int r) {
        auto b = world.group("g", iota(p), r);
        if (b->device() != dev) throw std::runtime_error("the backend is not on the world's device");
        b->set_timeout(120);
        auto& out = got[dev][r];
        auto keep = [&](const Tensor& t, size_t k) {
          auto h = host(t, k);
          out.insert(out.end(), h.begin(), h.end());
        };
        Tensor s = on(dev, values(n, 10 + r));
        b->all_reduce(s.data(), n, ReduceOp::Sum);
        keep(s, n);
        Tensor mx = on(dev, values(n, 20 + r));
        b->all_reduce(mx.data(), n, ReduceOp::Max);
        keep(mx, n);
        Tensor gi = on(dev, values(m, 30 + r)), go = on(dev, std::vector<float>(m * p));
        b->all_gather(gi.data(), go.data(), m);
        keep(go, m * p);
        Tensor ri = on(dev, values(m * p, 40 + r)), ro = on(dev, std::vector<float>(m));
        b->reduce_scatter(ri.data(), ro.data(), m);
        keep(ro, m);
        Tensor bc = on(dev, values(n, 50 + r));
        b->broadcast(bc.data(), n * sizeof(float), 1);
        keep(bc, n);
        // ring shifts of two sizes, twice (the staging pool is reused), and plain send/recv
        for (int rep = 0; rep < 2; ++rep)
          for (size_t len : {n, m}) {
            Tensor snd = on(dev, values(len, 60 + 10 * rep + r)), rcv = on(dev, std::vector<float>(len));
            b->sendrecv(snd.data(), len * sizeof(float), (r + 1) % p, rcv.data(), len * sizeof(float),
                        (r + p - 1) % p, 7 + rep);
            keep(rcv, len);
          }
        Tensor one = on(dev, values(m, 90 + r)), got1 = on(dev, std::vector<float>(m));
        b->send(one.data(), m * sizeof(float), (r + 1) % p, 99);
        b->recv(got1.data(), m * sizeof(float), (r + p - 1) % p, 99);
        keep(got1, m);
        double d = 0.5 + r;  // host doubles on every world
        b->all_reduce_f64(&d, 1, ReduceOp::Sum);
        f64[dev][r] = d;
      });
    }
    for (int r = 0; r < p; ++r) {
      INFO("rank " << r);
      CHECK(bit_differences(got[Device::CUDA][r], got[Device::CPU][r]) == 0);
      CHECK(f64[Device::CUDA][r] == f64[Device::CPU][r]);
    }
  }
}

TEST_CASE("Comm on the GPU: native, ring and endpoint paths equal the CPU's, masks and counters too",
          "[gpu][comm]") {
  const std::vector<std::string> specs = {
      "",  // exact: native collectives (and one exact ring)
      "ge:preset=one,packet=64,scope=*",
      "ge:preset=one,packet=64,scope=*,fill=stale",
      "drop:rate=0.2,packet=64,scope=*,fill=local",
      "ge:preset=one,step=message,packet=256,scope=*",
      "drop:rate=0.2,packet=64,scope=*,mode=endpoint,fill=stale",
      "drop:rate=0.2,packet=64,scope=*,mode=endpoint,fill=rescale",
      "drop:rate=0.2,packet=64,scope=*,transport=reliable",
  };
  for (int p : {2, 4})
    for (const auto& spec : specs)
      for (bool bf16 : {false, true}) {
        INFO("p = " << p << ", --net '" << spec << "', bf16 on the wire " << bf16);
        Outcome cpu = exercise(p, Device::CPU, spec, bf16);
        Outcome gpu = exercise(p, Device::CUDA, spec, bf16);
        int64_t lost = 0;
        for (int r = 0; r < p; ++r) {
          INFO("rank " << r);
          CHECK(bit_differences(gpu.data[r], cpu.data[r]) == 0);
          REQUIRE(gpu.sites[r].size() == cpu.sites[r].size());
          for (const auto& [site, c] : cpu.sites[r]) {
            INFO("site " << site);
            REQUIRE(gpu.sites[r].count(site) == 1);
            check_same_counters(gpu.sites[r].at(site), c);
            lost += c.packets_lost;
          }
        }
        const bool lossy = spec.find("rate") != std::string::npos || spec.find("preset") != std::string::npos;
        if (lossy && spec.find("reliable") == std::string::npos) CHECK(lost > 0);  // the masks did act
      }
}

TEST_CASE("bf16 wire rounding on the GPU gives the CPU's bits", "[gpu][comm]") {
  std::vector<float> x = values(10000, 9);
  const float special[] = {0.0f, -0.0f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 3.4e38f, -3.4e38f, 1e-40f,
                           std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  x.insert(x.end(), std::begin(special), std::end(special));
  Tensor d = on(Device::CUDA, x);
  round_to_bf16(Device::CUDA, d.data(), x.size());
  round_to_bf16(Device::CPU, x.data(), x.size());
  CHECK(bit_differences(host(d, x.size()), x) == 0);
}

TEST_CASE("virtual ranks on the GPU: a missing peer times out", "[gpu][comm]") {
  LocalWorld world(2, Device::CUDA);
  auto b = world.group("t", {0, 1}, 0);
  b->set_timeout(0.2);
  Tensor x = on(Device::CUDA, {1.0f});
  CHECK_THROWS_AS(b->all_reduce(x.data(), 1, ReduceOp::Sum), CommTimeout);
  CHECK_THROWS_AS(b->recv(x.data(), sizeof(float), 1, 0), CommTimeout);
}

#ifdef LOSSYTP_HAVE_NCCL  // not in tests/fake_cuda's build (the CUDA stand-in has no NCCL)
TEST_CASE("NCCL groups of one rank work on device buffers", "[gpu][comm]") {
  const Layout l = Layout::make(1, 0, 1, 1);
  auto g = make_nccl_groups(MPI_COMM_SELF, l);
  CHECK(g->tp->device() == Device::CUDA);
  CHECK(g->dp->device() == Device::CUDA);
  CHECK(g->tp->backend().name() == "nccl");
  g->tp->backend().set_timeout(30);
  std::vector<float> h = values(100, 3);
  Tensor in = on(Device::CUDA, h), out = on(Device::CUDA, std::vector<float>(100));
  g->tp->all_gather(in.data(), out.data(), 100, "g");  // p = 1: a device copy
  CHECK(host(out, 100) == h);
  double d = 2.5;
  g->tp->backend().all_reduce_f64(&d, 1, ReduceOp::Sum);  // host doubles
  CHECK(d == 2.5);
  CHECK_THROWS_AS(g->tp->set_device(Device::CPU), std::invalid_argument);
}
#endif  // LOSSYTP_HAVE_NCCL
