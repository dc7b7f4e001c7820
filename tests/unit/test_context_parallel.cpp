// Context-parallel attention (models/context_parallel.*) over C virtual ranks of one LocalWorld,
// against a double-precision causal attention of the whole sequence written here: every rank's
// o and lse, and dq, dk, dv of sum(w * o), equal the reference's rows of that rank (mapped by
// cp_position) for p2p, all_gather and a2a at C = 1, 2, 4, with GQA. Also: the messages on each
// cp site, a lossy network scoped to cp, the a2a divisibility error, and Comm::all_to_all.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "models/context_parallel.h"
#include "models/workspace.h"
#include "netmodels/netmodel.h"
#include "sim/comm.h"
#include "sim/local_backend.h"

using namespace lossytp;

namespace {

// Runs body(comm, rank) on C ranks of group "cp" (network `spec`, "" = none; seed 7);
// returns each rank's exception message ("" when it ran through).
template <typename F>
std::vector<std::string> on_cp_group(int C, const std::string& spec, F body) {
  std::shared_ptr<const net::NetSpec> net;
  if (!spec.empty()) net = std::make_shared<const net::NetSpec>(net::parse_net_spec(spec));
  LocalWorld world(C);
  std::vector<int> members;
  for (int r = 0; r < C; ++r) members.push_back(r);
  std::vector<std::string> errors(C);
  std::vector<std::thread> threads;
  for (int r = 0; r < C; ++r)
    threads.emplace_back([&, r] {
      try {
        Comm comm(world.group("cp", members, r), "cp", nullptr);
        if (net) comm.set_network(net, 7);
        comm.begin_step(5);
        body(comm, r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

void require_ok(const std::vector<std::string>& errors) {
  for (const auto& e : errors) REQUIRE(e.empty());
}

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// Causal GQA attention of the whole sequence in double: q [B, NH, T, HD], k, v [B, NKV, T, HD].
// Forward o, lse; backward the gradients of sum(w * o).
struct Reference {
  std::vector<double> o, lse, dq, dk, dv;
};

Reference reference(const std::vector<float>& q, const std::vector<float>& k,
                    const std::vector<float>& v, const std::vector<float>& w, int B, int NH,
                    int NKV, int T, int HD) {
  Reference ref;
  ref.o.assign(q.size(), 0.0);
  ref.dq.assign(q.size(), 0.0);
  ref.lse.assign(static_cast<size_t>(B) * NH * T, 0.0);
  ref.dk.assign(k.size(), 0.0);
  ref.dv.assign(v.size(), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(HD));
  std::vector<double> p(T), dp(T);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      const int g = h / (NH / NKV);
      auto Q = [&](int i) { return &q[((static_cast<size_t>(b) * NH + h) * T + i) * HD]; };
      auto K = [&](int j) { return &k[((static_cast<size_t>(b) * NKV + g) * T + j) * HD]; };
      auto V = [&](int j) { return &v[((static_cast<size_t>(b) * NKV + g) * T + j) * HD]; };
      const size_t qrow = (static_cast<size_t>(b) * NH + h) * T;
      const size_t krow = (static_cast<size_t>(b) * NKV + g) * T;
      for (int i = 0; i < T; ++i) {
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          double s = 0.0;
          for (int c = 0; c < HD; ++c) s += static_cast<double>(Q(i)[c]) * K(j)[c];
          p[j] = s * scale;
          mx = std::max(mx, p[j]);
        }
        double sum = 0.0;
        for (int j = 0; j <= i; ++j) sum += std::exp(p[j] - mx);
        const double lse = mx + std::log(sum);
        ref.lse[qrow + i] = lse;
        for (int j = 0; j <= i; ++j) p[j] = std::exp(p[j] - lse);
        double* o = &ref.o[(qrow + i) * HD];
        for (int j = 0; j <= i; ++j)
          for (int c = 0; c < HD; ++c) o[c] += p[j] * V(j)[c];
        // Backward of sum(w * o): dO = w.
        const float* dO = &w[(qrow + i) * HD];
        double D = 0.0;
        for (int c = 0; c < HD; ++c) D += dO[c] * o[c];
        for (int j = 0; j <= i; ++j) {
          double s = 0.0;
          for (int c = 0; c < HD; ++c) s += static_cast<double>(dO[c]) * V(j)[c];
          dp[j] = p[j] * (s - D);  // dS
          for (int c = 0; c < HD; ++c) {
            ref.dv[(krow + j) * HD + c] += p[j] * dO[c];
            ref.dq[(qrow + i) * HD + c] += dp[j] * K(j)[c] * scale;
            ref.dk[(krow + j) * HD + c] += dp[j] * Q(i)[c] * scale;
          }
        }
      }
    }
  return ref;
}

// Rank r's rows of x [N, T, D] (global order) -> [N, Tl, D] in the local order.
template <typename X>
std::vector<float> local_rows(const std::vector<X>& x, int N, int T, int D, int r, int C) {
  const int Tl = T / C, Tc = Tl / 2;
  std::vector<float> out(static_cast<size_t>(N) * Tl * D);
  for (int n = 0; n < N; ++n)
    for (int lr = 0; lr < Tl; ++lr) {
      const int gr = cp_position(lr, Tc, r, C);
      for (int c = 0; c < D; ++c)
        out[(static_cast<size_t>(n) * Tl + lr) * D + c] =
            static_cast<float>(x[(static_cast<size_t>(n) * T + gr) * D + c]);
    }
  return out;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m;
}

bool all_finite(const std::vector<float>& a) {
  for (float x : a)
    if (!std::isfinite(x)) return false;
  return true;
}

struct RankResult {
  std::vector<float> o, lse, dq, dk, dv;
  CommStats stats;
};

struct Shape {
  int B, NH, NKV, T, HD;
};

// One forward and backward of every rank at site "layer0.attn".
std::vector<RankResult> run_cp(const std::string& type, int C, const Shape& s, const std::string& spec,
                               const std::vector<float>& q, const std::vector<float>& k,
                               const std::vector<float>& v, const std::vector<float>& w) {
  std::vector<RankResult> res(C);
  const int Tl = s.T / C;
  require_ok(on_cp_group(C, spec, [&](Comm& comm, int r) {
    ContextParallelAttention attn(type, s.NH, s.NKV, s.HD, Device::CPU);
    Workspace ws;
    const auto ql = local_rows(q, s.B * s.NH, s.T, s.HD, r, C);
    const auto kl = local_rows(k, s.B * s.NKV, s.T, s.HD, r, C);
    const auto vl = local_rows(v, s.B * s.NKV, s.T, s.HD, r, C);
    const auto wl = local_rows(w, s.B * s.NH, s.T, s.HD, r, C);
    RankResult& out = res[r];
    out.o.assign(ql.size(), 0.0f);
    out.lse.assign(static_cast<size_t>(s.B) * s.NH * Tl, 0.0f);
    out.dq.assign(ql.size(), 7.0f);  // overwritten
    out.dk.assign(kl.size(), 7.0f);
    out.dv.assign(vl.size(), 7.0f);
    attn.forward(out.o.data(), out.lse.data(), ql.data(), kl.data(), vl.data(), s.B, Tl, comm,
                 "layer0.attn", ws);
    attn.backward(out.dq.data(), out.dk.data(), out.dv.data(), wl.data(), ql.data(), kl.data(),
                  vl.data(), out.o.data(), out.lse.data(), s.B, Tl, comm, "layer0.attn", ws);
    out.stats = comm.stats();
  }));
  return res;
}

}  // namespace

TEST_CASE("context parallel attention equals whole-sequence attention (p2p, all_gather, a2a)",
          "[context_parallel]") {
  // The last crosses the kernels' 64-row tiles (C = 1, 2).
  const std::vector<Shape> shapes = {{2, 4, 2, 16, 8}, {2, 4, 4, 32, 16}, {1, 4, 4, 256, 8}};
  for (const Shape& s : shapes) {
    const auto q = randn(static_cast<size_t>(s.B) * s.NH * s.T * s.HD, 1);
    const auto k = randn(static_cast<size_t>(s.B) * s.NKV * s.T * s.HD, 2);
    const auto v = randn(static_cast<size_t>(s.B) * s.NKV * s.T * s.HD, 3);
    const auto w = randn(static_cast<size_t>(s.B) * s.NH * s.T * s.HD, 4);
    const Reference ref = reference(q, k, v, w, s.B, s.NH, s.NKV, s.T, s.HD);
    for (int C : {1, 2, 4}) {
      for (const char* type : kCpCommTypes) {
        if (std::string(type) == "a2a" && (s.NH % C || s.NKV % C)) continue;
        INFO("type " << type << ", C " << C << ", NH " << s.NH << ", NKV " << s.NKV << ", T " << s.T
                     << ", HD " << s.HD);
        const auto res = run_cp(type, C, s, "", q, k, v, w);
        for (int r = 0; r < C; ++r) {
          INFO("rank " << r);
          CHECK(max_diff(res[r].o, local_rows(ref.o, s.B * s.NH, s.T, s.HD, r, C)) < 1e-5);
          CHECK(max_diff(res[r].lse, local_rows(ref.lse, s.B * s.NH, s.T, 1, r, C)) < 1e-5);
          CHECK(max_diff(res[r].dq, local_rows(ref.dq, s.B * s.NH, s.T, s.HD, r, C)) < 1e-5);
          CHECK(max_diff(res[r].dk, local_rows(ref.dk, s.B * s.NKV, s.T, s.HD, r, C)) < 1e-5);
          CHECK(max_diff(res[r].dv, local_rows(ref.dv, s.B * s.NKV, s.T, s.HD, r, C)) < 1e-5);
        }
      }
    }
  }
}

TEST_CASE("context parallel: messages on the cp sites of each comm type", "[context_parallel]") {
  const Shape s{2, 4, 4, 32, 8};
  const auto q = randn(static_cast<size_t>(s.B) * s.NH * s.T * s.HD, 11);
  const auto k = randn(static_cast<size_t>(s.B) * s.NKV * s.T * s.HD, 12);
  const auto v = randn(static_cast<size_t>(s.B) * s.NKV * s.T * s.HD, 13);
  const auto w = randn(static_cast<size_t>(s.B) * s.NH * s.T * s.HD, 14);
  for (int C : {1, 2, 4}) {
    const int Tl = s.T / C;
    const int64_t kv_bytes = 2LL * s.B * s.NKV * Tl * s.HD * 4;  // one [K;V] block
    for (const char* type : kCpCommTypes) {
      INFO("type " << type << ", C " << C);
      auto res = run_cp(type, C, s, "", q, k, v, w);
      // p2p and all_gather visit and merge the K/V blocks in the same order: same bits.
      if (std::string(type) == "all_gather") {
        const auto ring = run_cp("p2p", C, s, "", q, k, v, w);
        for (int r = 0; r < C; ++r) {
          CHECK(res[r].o == ring[r].o);
          CHECK(res[r].lse == ring[r].lse);
          CHECK(res[r].dq == ring[r].dq);
        }
      }
      for (int r = 0; r < C; ++r) {
        CommStats& st = res[r].stats;
        if (C == 1) {
          CHECK(st.sites().empty());
          continue;
        }
        for (const auto& [name, c] : st.sites()) {
          INFO(name);
          CHECK(name.rfind("layer0.attn.", 0) == 0);
          CHECK(c.packets_lost == 0);
        }
        if (std::string(type) == "p2p") {
          CHECK(st.sites().size() == 3);
          CHECK(st.site("layer0.attn.kv.fwd").messages == C - 1);
          CHECK(st.site("layer0.attn.kv.fwd").calls == C - 1);
          CHECK(st.site("layer0.attn.kv.fwd").bytes == (C - 1) * kv_bytes);
          CHECK(st.site("layer0.attn.kv.fwd").packets > 0);  // the receiver's count
          CHECK(st.site("layer0.attn.kv.bwd").messages == C - 1);
          CHECK(st.site("layer0.attn.dkv.bwd").messages == C);  // one more hop: home
          CHECK(st.site("layer0.attn.dkv.bwd").bytes == C * kv_bytes);
        } else if (std::string(type) == "all_gather") {
          CHECK(st.sites().size() == 3);
          for (const char* site : {"layer0.attn.kv.fwd", "layer0.attn.kv.bwd", "layer0.attn.dkv.bwd"}) {
            INFO(site);
            CHECK(st.site(site).calls == 1);
            CHECK(st.site(site).messages == C - 1);
            CHECK(st.site(site).bytes == (C - 1) * kv_bytes);
          }
        } else {
          CHECK(st.sites().size() == 5);
          for (const char* site : {"layer0.attn.a2a.qkv.fwd", "layer0.attn.a2a.out.fwd",
                                   "layer0.attn.a2a.qkv.bwd", "layer0.attn.a2a.dout.bwd",
                                   "layer0.attn.a2a.dqkv.bwd"}) {
            INFO(site);
            CHECK(st.site(site).calls == 1);
            CHECK(st.site(site).messages == C - 1);
          }
          // q, k, v of this rank's rows, 1/C of them per peer.
          const int64_t qkv = static_cast<int64_t>(s.B) * (s.NH + 2 * s.NKV) * Tl * s.HD * 4;
          CHECK(st.site("layer0.attn.a2a.qkv.fwd").bytes == (C - 1) * qkv / C);
          CHECK(st.site("layer0.attn.a2a.dqkv.bwd").bytes == (C - 1) * qkv / C);
        }
      }
    }
  }
}

TEST_CASE("context parallel under a lossy network scoped to cp: losses on the cp sites, finite",
          "[context_parallel]") {
  const Shape s{2, 4, 4, 32, 16};
  const auto q = randn(static_cast<size_t>(s.B) * s.NH * s.T * s.HD, 21);
  const auto k = randn(static_cast<size_t>(s.B) * s.NKV * s.T * s.HD, 22);
  const auto v = randn(static_cast<size_t>(s.B) * s.NKV * s.T * s.HD, 23);
  const auto w = randn(static_cast<size_t>(s.B) * s.NH * s.T * s.HD, 24);
  for (int C : {2, 4}) {
    for (const char* type : kCpCommTypes) {
      INFO("type " << type << ", C " << C);
      auto res = run_cp(type, C, s, "drop:rate=0.05,scope=cp", q, k, v, w);
      int64_t lost = 0, lost_kv_fwd = 0;
      for (int r = 0; r < C; ++r) {
        CHECK(all_finite(res[r].o));
        CHECK(all_finite(res[r].lse));
        CHECK(all_finite(res[r].dq));
        CHECK(all_finite(res[r].dk));
        CHECK(all_finite(res[r].dv));
        CommStats& st = res[r].stats;
        lost += st.total().packets_lost;
        lost_kv_fwd += st.site("layer0.attn.kv.fwd").packets_lost;
      }
      CHECK(lost > 0);
      if (std::string(type) == "p2p") CHECK(lost_kv_fwd > 0);
    }
  }
  // Out of scope (scope=tp): nothing lost, exact results.
  const auto exact = run_cp("p2p", 2, s, "", q, k, v, w);
  auto tp_only = run_cp("p2p", 2, s, "drop:rate=0.05,scope=tp", q, k, v, w);
  for (int r = 0; r < 2; ++r) {
    CHECK(tp_only[r].o == exact[r].o);
    CHECK(tp_only[r].dk == exact[r].dk);
    CHECK(tp_only[r].stats.total().packets_lost == 0);
  }
}

TEST_CASE("context parallel: bad comm type, odd local length, a2a heads not divisible by C",
          "[context_parallel]") {
  CHECK_THROWS_AS(check_cp_comm_type("ring"), std::invalid_argument);
  CHECK_NOTHROW(check_cp_comm_type("a2a"));
  CHECK_THROWS_AS(ContextParallelAttention("ulysses", 4, 2, 8, Device::CPU), std::invalid_argument);

  const auto errors = on_cp_group(4, "", [](Comm& comm, int) {
    ContextParallelAttention attn("a2a", 4, 2, 8, Device::CPU);  // 2 K/V groups over 4 ranks
    Workspace ws;
    std::vector<float> q(2 * 4 * 8 * 8), kv(2 * 2 * 8 * 8), o(q.size()), lse(2 * 4 * 8);
    attn.forward(o.data(), lse.data(), q.data(), kv.data(), kv.data(), 2, 8, comm, "layer0.attn", ws);
  });
  for (const auto& e : errors) {
    CHECK(e.find("--cp-comm-type a2a") != std::string::npos);
    CHECK(e.find("--num-query-groups") != std::string::npos);
    CHECK(e.find("--context-parallel-size") != std::string::npos);
  }
  const auto odd = on_cp_group(2, "", [](Comm& comm, int) {
    ContextParallelAttention attn("p2p", 4, 2, 8, Device::CPU);
    Workspace ws;
    std::vector<float> q(2 * 4 * 7 * 8), kv(2 * 2 * 7 * 8), o(q.size()), lse(2 * 4 * 7);
    attn.forward(o.data(), lse.data(), q.data(), kv.data(), kv.data(), 2, 7, comm, "layer0.attn", ws);
  });
  for (const auto& e : odd) CHECK(e.find("divisible by 2 x --context-parallel-size") != std::string::npos);
}

TEST_CASE("Comm::all_to_all: exact blocks, one call and p-1 messages per rank, tags agree",
          "[comm][context_parallel]") {
  for (int C : {1, 3, 4}) {
    INFO("C " << C);
    const size_t m = 1000;  // 4000 bytes: 3 packets of 1448
    std::vector<std::vector<float>> got(C);
    std::vector<SiteCounters> counters(C);
    std::vector<int> tags(C);
    auto value = [](int from, int to, size_t i) { return 1.0f + from * 1000.0f + to * 100.0f + i * 0.25f; };
    require_ok(on_cp_group(C, "", [&](Comm& comm, int r) {
      std::vector<float> in(m * C);
      for (int j = 0; j < C; ++j)
        for (size_t i = 0; i < m; ++i) in[j * m + i] = value(r, j, i);
      got[r].assign(m * C, 0.0f);
      comm.all_to_all(in.data(), got[r].data(), m, "a2a.test");
      comm.all_to_all(in.data(), got[r].data(), m, "a2a.test");  // twice: tags move on
      tags[r] = comm.next_tag();
      counters[r] = comm.stats().site("a2a.test");
    }));
    for (int r = 0; r < C; ++r) {
      for (int j = 0; j < C; ++j)
        for (size_t i = 0; i < m; ++i) REQUIRE(got[r][j * m + i] == value(j, r, i));
      CHECK(tags[r] == 2);  // one tag per all_to_all, the same on every rank
      if (C == 1) continue;
      CHECK(counters[r].calls == 2);
      CHECK(counters[r].messages == 2 * (C - 1));
      CHECK(counters[r].bytes == 2 * (C - 1) * static_cast<int64_t>(m) * 4);
      CHECK(counters[r].packets == 2 * (C - 1) * 3);
      CHECK(counters[r].packets_lost == 0);
    }
  }
  // Lossy and in scope: the receiver loses packets and fills zeros; own block untouched.
  const int C = 4;
  const size_t m = 4000;
  std::vector<int64_t> lost(C), zeros(C);
  std::vector<int> own_ok(C);  // not vector<bool>: ranks write it concurrently
  require_ok(on_cp_group(C, "drop:rate=0.1,scope=cp", [&](Comm& comm, int r) {
    std::vector<float> in(m * C, 1.0f), out(m * C, -1.0f);
    comm.all_to_all(in.data(), out.data(), m, "a2a.test");
    own_ok[r] = 1;
    for (size_t i = 0; i < m; ++i) own_ok[r] = own_ok[r] && out[r * m + i] == 1.0f;
    for (float x : out) zeros[r] += x == 0.0f;
    lost[r] = comm.stats().site("a2a.test").packets_lost;
  }));
  for (int r = 0; r < C; ++r) {
    CHECK(own_ok[r]);
    CHECK(lost[r] > 0);
    CHECK(zeros[r] > 0);
  }
}
