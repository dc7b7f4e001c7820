// encode=hadamard (docs/netmodels.md): the randomized Hadamard transform of message payloads.
// The kernels against a double-precision reference, the spreading of a lost packet's error,
// the spec option, and end to end through Comm (ring, endpoint, point-to-point) over LocalWorld.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/comm_ranks.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"
#include "netmodels/netmodel.h"
#include "sim/comm.h"
#include "sim/local_backend.h"
#include "sim/ring_collectives.h"

using namespace lossytp;

using lossytp::testing::on_ranks;

namespace {

std::vector<float> gaussian(size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// Straightforward reference: H_ij = (-1)^popcount(i & j) / sqrt(len) on each block of the layout
// (whole blocks, then the tail by its binary digits, largest first), in double.
std::vector<double> reference_transform(const std::vector<float>& x, size_t block) {
  std::vector<double> y(x.size(), 0.0);
  for (size_t a = 0; a < x.size();) {
    size_t len = block;
    if (x.size() - a < block) {
      len = 1;
      while (len * 2 <= x.size() - a) len *= 2;
    }
    const double s = 1.0 / std::sqrt(static_cast<double>(len));
    for (size_t i = 0; i < len; ++i) {
      double acc = 0.0;
      for (size_t j = 0; j < len; ++j) acc += (__builtin_popcountll(i & j) & 1 ? -1.0 : 1.0) * x[a + j];
      y[a + i] = acc * s;
    }
    a += len;
  }
  return y;
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace

TEST_CASE("hadamard: the transform is the orthonormal Walsh-Hadamard matrix and its own inverse", "[hadamard]") {
  for (size_t block : {1, 2, 4, 8, 16, 64, 256}) {
    for (size_t n : {block, 3 * block, 3 * block + 37, size_t(1), size_t(7)}) {
      const std::vector<float> x = gaussian(n, static_cast<unsigned>(block * 1000 + n));
      std::vector<float> y = x;
      cpu::hadamard_transform(y.data(), n, block);
      const std::vector<double> ref = reference_transform(x, block);
      double e2 = 0, r2 = 0, nx = 0, ny = 0;
      for (size_t i = 0; i < n; ++i) {
        e2 += (y[i] - ref[i]) * (y[i] - ref[i]);
        r2 += ref[i] * ref[i];
        nx += double(x[i]) * x[i];
        ny += double(y[i]) * y[i];
      }
      INFO("block " << block << " n " << n);
      CHECK(std::sqrt(e2 / r2) < 1e-6);
      CHECK(ny == Approx(nx).epsilon(1e-5));  // orthonormal: norms kept
      cpu::hadamard_transform(y.data(), n, block);
      CHECK(rel_err(y, x) < 1e-6);  // its own inverse
    }
  }
  std::vector<float> z(12, 1.0f);
  CHECK_THROWS_AS(cpu::hadamard_transform(z.data(), z.size(), 12), std::invalid_argument);
}

TEST_CASE("hadamard: encode/decode round trip with random signs", "[hadamard]") {
  const size_t n = 10000, block = 1024;
  const std::vector<float> x = gaussian(n, 1);
  std::vector<float> y = x;
  ops::hadamard_encode(Device::CPU, y.data(), n, block, 42);
  CHECK(rel_err(y, x) > 0.5);  // really mixed
  ops::hadamard_decode(Device::CPU, y.data(), n, block, 42);
  CHECK(rel_err(y, x) < 1e-6);
  // the signs: +-1, about half negative, a function of the key
  std::vector<float> ones(n, 1.0f), other(n, 1.0f);
  cpu::hadamard_signs(ones.data(), n, 42);
  cpu::hadamard_signs(other.data(), n, 43);
  size_t neg = 0, differ = 0;
  for (size_t i = 0; i < n; ++i) {
    REQUIRE(std::fabs(ones[i]) == 1.0f);
    neg += ones[i] < 0;
    differ += ones[i] != other[i];
  }
  CHECK(neg > n * 45 / 100);
  CHECK(neg < n * 55 / 100);
  CHECK(differ > n * 45 / 100);
  // the wrong key does not decode
  std::vector<float> w = x;
  ops::hadamard_encode(Device::CPU, w.data(), n, block, 42);
  ops::hadamard_decode(Device::CPU, w.data(), n, block, 43);
  CHECK(rel_err(w, x) > 0.5);
}

TEST_CASE("hadamard: a lost packet's error is spread over its block with the lost energy", "[hadamard]") {
  const size_t n = 4096, block = 4096, epp = 256;  // 16 packets of 256 floats (1024 bytes)
  const std::vector<float> x = gaussian(n, 7);
  const uint64_t key = 99;
  net::DeliveryPlan plan;
  plan.packet_bytes = epp * 4;
  plan.packets = n / epp;
  plan.lost = 1;
  plan.lost_mask.assign(plan.packets, 0);
  plan.lost_mask[5] = 1;
  const size_t a = 5 * epp, b = a + epp;

  std::vector<float> enc = x;
  ops::hadamard_encode(Device::CPU, enc.data(), n, block, key);
  double lost_energy = 0;
  for (size_t i = a; i < b; ++i) lost_energy += double(enc[i]) * enc[i];
  DeviceBuffer ref(Device::CPU, 0);
  std::vector<float> got(n, 0.0f);
  const size_t filled = apply_delivery_encoded(Device::CPU, got.data(), enc.data(), n, plan, net::Fill::Zero,
                                               false, ReduceOp::Sum, 1.0f, nullptr, block, key, ref);
  CHECK(filled == epp);
  double err2 = 0, max_err = 0;
  size_t touched = 0;
  for (size_t i = 0; i < n; ++i) {
    const double e = double(got[i]) - x[i];
    err2 += e * e;
    max_err = std::max(max_err, std::fabs(e));
    touched += std::fabs(e) > 1e-7;
  }
  // orthonormal: the error's energy is exactly what the lost coordinates carried
  CHECK(err2 == Approx(lost_energy).epsilon(1e-4));
  CHECK(touched > n * 99 / 100);  // every coordinate of the block carries some
  // Zero fill without encoding: a hole of 256 elements, each off by its whole value.
  double plain_max = 0;
  for (size_t i = a; i < b; ++i) plain_max = std::max(plain_max, double(std::fabs(x[i])));
  // each coordinate's error ~ N(0, lost_energy / n): rms sqrt(1/16) of the data's
  const double rms = std::sqrt(err2 / n);
  CHECK(rms == Approx(std::sqrt(lost_energy / n)).epsilon(1e-3));
  CHECK(rms < 0.35);
  CHECK(max_err < 0.6 * plain_max);
  INFO("encoded: rms " << rms << " max " << max_err << "; plain zero fill: max " << plain_max);

  // The same in a reduction: own += decoded contribution with the lost coordinates zero.
  std::vector<float> own(n, 1.0f), enc2 = x;
  ops::hadamard_encode(Device::CPU, enc2.data(), n, block, key);
  apply_delivery_encoded(Device::CPU, own.data(), enc2.data(), n, plan, net::Fill::Zero, true, ReduceOp::Sum,
                         1.0f, nullptr, block, key, ref);
  for (size_t i = 0; i < n; i += 97) CHECK(own[i] == Approx(1.0f + got[i]).margin(1e-5));

  // Stale fill holding the true values recovers the message exactly (the fill is encoded with
  // the message's signs), and the stale store takes the decoded block.
  std::vector<float> stale = x, got2(n, 0.0f), enc3 = x;
  ops::hadamard_encode(Device::CPU, enc3.data(), n, block, key);
  apply_delivery_encoded(Device::CPU, got2.data(), enc3.data(), n, plan, net::Fill::Stale, false, ReduceOp::Sum,
                         1.0f, stale.data(), block, key, ref);
  CHECK(rel_err(got2, x) < 1e-6);
  CHECK(rel_err(stale, x) < 1e-6);
}

TEST_CASE("hadamard: encode=none|hadamard and block=N in the spec", "[hadamard]") {
  net::NetSpec s = net::parse_net_spec("drop:rate=0.01,encode=hadamard");
  CHECK(s.encode == net::Encode::Hadamard);
  CHECK(s.hadamard_block(4) == 8192);  // 16 packets of 362 floats -> 5792 -> 8192
  CHECK(s.hadamard_block(2) == 16384);
  CHECK(s.describe() == "drop:rate=0.01,encode=hadamard");
  s = net::parse_net_spec("drop:rate=0.01,encode=hadamard,block=1024");
  CHECK(s.hadamard_block(4) == 1024);
  CHECK(net::parse_net_spec(s.describe()).describe() == s.describe());
  CHECK(net::parse_net_spec("drop:rate=0.01,encode=none").describe() == "drop:rate=0.01");
  auto error = [](const std::string& spec) {
    try {
      net::parse_net_spec(spec);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(error("drop:rate=0.01,encode=fft").find("encode=fft") != std::string::npos);
  CHECK(error("drop:rate=0.01,encode=hadamard,block=1000").find("block=1000") != std::string::npos);
  CHECK(error("drop:rate=0.01,block=1024").find("needs encode=hadamard") != std::string::npos);
  CHECK(error("drop:rate=0.01,encode=hadamard,fill=count").empty());  // count works in the coded domain
}

namespace {

// Every rank's all-reduce result of per-rank gaussian inputs under `spec`.
std::vector<std::vector<float>> all_reduce_results(int p, size_t n, const std::string& spec,
                                                   int64_t* lost = nullptr) {
  std::vector<std::vector<float>> out(p);
  std::vector<int64_t> lost_r(p, 0);
  on_ranks(p, spec, [&](Comm& comm, int r) {
    comm.begin_step(2);
    std::vector<float> x = gaussian(n, 100 + r);
    comm.all_reduce(x.data(), n, "layer0.mlp.fwd");
    out[r] = x;
    lost_r[r] = comm.stats().total().packets_lost;
  });
  if (lost) {
    *lost = 0;
    for (int64_t l : lost_r) *lost += l;
  }
  return out;
}

}  // namespace

TEST_CASE("hadamard: ring and endpoint all-reduce with nothing lost equal the plain one", "[hadamard]") {
  for (int p : {2, 4}) {
    const size_t n = 5003;  // uneven chunks, several blocks and tails
    const auto plain = all_reduce_results(p, n, "");
    for (const std::string spec : {"drop:rate=0,encode=hadamard,scope=*",
                                   "drop:rate=0,encode=hadamard,block=256,scope=*",
                                   "drop:rate=0,encode=hadamard,block=64,mode=endpoint,scope=*",
                                   "drop:rate=0,encode=hadamard,block=128,fill=stale,scope=*"}) {
      const auto enc = all_reduce_results(p, n, spec);
      for (int r = 0; r < p; ++r) {
        INFO("p " << p << " spec " << spec << " rank " << r);
        double max_err = 0;
        for (size_t i = 0; i < n; ++i) max_err = std::max(max_err, double(std::fabs(enc[r][i] - plain[r][i])));
        CHECK(max_err < 1e-5);
      }
    }
  }
}

TEST_CASE("hadamard: a lossy ring all-reduce spreads the losses instead of leaving holes", "[hadamard]") {
  for (int p : {2, 4}) {
    // chunks of whole blocks: a tail block shorter than a packet, lost whole, would be a hole
    // even coded (docs/netmodels.md)
    const size_t n = 20480;
    const auto exact = all_reduce_results(p, n, "");
    int64_t lost_plain = 0, lost_enc = 0;
    const auto plain = all_reduce_results(p, n, "drop:rate=0.05,packet=256,scope=*", &lost_plain);
    const auto enc = all_reduce_results(p, n, "drop:rate=0.05,packet=256,encode=hadamard,block=1024,scope=*", &lost_enc);
    CHECK(lost_plain > 0);
    CHECK(lost_enc == lost_plain);  // the same packet fates: only the coding differs
    for (int r = 0; r < p; ++r) {
      INFO("p " << p << " rank " << r);
      size_t holes = 0, enc_zero = 0, plain_off = 0, enc_off = 0;
      double plain_max = 0, enc_max = 0;
      for (size_t i = 0; i < n; ++i) {
        REQUIRE(std::isfinite(enc[r][i]));
        holes += plain[r][i] == 0.0f;
        enc_zero += enc[r][i] == 0.0f;
        const double ep = std::fabs(plain[r][i] - exact[r][i]), ee = std::fabs(enc[r][i] - exact[r][i]);
        plain_off += ep > 1e-4;
        enc_off += ee > 1e-4;
        plain_max = std::max(plain_max, ep);
        enc_max = std::max(enc_max, ee);
      }
      INFO("plain: " << plain_off << " off, max " << plain_max << "; encoded: " << enc_off << " off, max " << enc_max);
      CHECK(enc_zero == 0);             // no element is the fill value
      CHECK(enc_off > 2 * plain_off);   // the error is spread over many more elements
      CHECK(enc_max < plain_max);       // and each is smaller
    }
  }
}

TEST_CASE("hadamard: point-to-point messages are encoded by send and decoded by recv", "[hadamard]") {
  const size_t n = 3072;  // six blocks of 512
  const std::vector<float> x = gaussian(n, 5);
  for (const std::string spec : {"drop:rate=0,encode=hadamard,block=512,scope=*", "drop:rate=0.1,packet=256,encode=hadamard,block=512,scope=*"}) {
    const bool lossy = spec.find("0.1") != std::string::npos;
    std::vector<float> got(n), summed(n);
    on_ranks(2, spec, [&](Comm& comm, int r) {
      comm.begin_step(2);
      if (r == 0) {
        comm.send(x.data(), n, 1, 3, "pp.fwd");
        comm.wait_sends();
      } else {
        comm.recv(got.data(), n, 0, 3, "pp.fwd");
      }
      std::vector<float> y = x;  // both sides hold x: the sum is 2x when nothing is lost
      comm.exchange_add(y.data(), n, 1 - r, 4, "pp.embed.grad");
      comm.wait_sends();
      if (r == 1) summed = y;
    });
    INFO(spec);
    if (!lossy) {
      CHECK(rel_err(got, x) < 1e-6);
      std::vector<float> twice(n);
      for (size_t i = 0; i < n; ++i) twice[i] = 2 * x[i];
      CHECK(rel_err(summed, twice) < 1e-6);
    } else {
      size_t zeros = 0;
      for (size_t i = 0; i < n; ++i) {
        REQUIRE(std::isfinite(got[i]));
        zeros += got[i] == 0.0f;
      }
      CHECK(zeros == 0);
      const double e = rel_err(got, x);
      CHECK(e > 0.0);
      CHECK(e < 0.6);  // ~sqrt(loss rate) of the message's energy
    }
  }
}
