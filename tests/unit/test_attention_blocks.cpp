// Blockwise causal attention by global positions (kernels/cpu/attention_blocks.cpp), the
// building block of context parallelism. Checked against double-precision references written
// here from the definition (forward, analytic backward, central finite differences), and
// blockwise (keys and queries cut into chunks, blocks merged by log-sum-exp, backward with the
// merged lse/delta) against the whole causal attention and the fused kernel of attention.cpp on
// its grouped qkv layout.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "common/kernel_checks.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"

namespace cpu = lossytp::cpu;
namespace ops = lossytp::ops;
using lossytp::Device;
using namespace lossytp::testing;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Blk {
  int B, NH, NKV, Tq, Tk, HD, qp, kp;
  size_t nq() const { return size_t(B) * NH * Tq * HD; }
  size_t nk() const { return size_t(B) * NKV * Tk * HD; }
  size_t rows() const { return size_t(B) * NH * Tq; }
  size_t qi(int b, int h, int i, int d) const { return ((size_t(b) * NH + h) * Tq + i) * HD + d; }
  size_t ki(int b, int g, int j, int d) const { return ((size_t(b) * NKV + g) * Tk + j) * HD + d; }
  bool vis(int i, int j) const { return int64_t(kp) + j <= int64_t(qp) + i; }
};

// Double-precision forward: o [B, NH, Tq, HD], lse [B, NH, Tq] (-inf and o = 0 for empty rows).
void ref_forward(const Blk& s, const VecD& q, const VecD& k, const VecD& v, VecD& o, VecD& lse) {
  o.assign(s.nq(), 0.0);
  lse.assign(s.rows(), -kInf);
  const double sc = 1.0 / std::sqrt(double(s.HD));
  const int R = s.NH / s.NKV;
  std::vector<double> p(s.Tk);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int i = 0; i < s.Tq; ++i) {
        double mx = -kInf;
        for (int j = 0; j < s.Tk; ++j) {
          if (!s.vis(i, j)) continue;
          double d = 0;
          for (int c = 0; c < s.HD; ++c) d += q[s.qi(b, h, i, c)] * k[s.ki(b, h / R, j, c)];
          p[j] = d * sc;
          mx = std::max(mx, p[j]);
        }
        if (mx == -kInf) continue;
        double sum = 0;
        for (int j = 0; j < s.Tk; ++j)
          if (s.vis(i, j)) sum += std::exp(p[j] - mx);
        for (int j = 0; j < s.Tk; ++j) {
          if (!s.vis(i, j)) continue;
          const double w = std::exp(p[j] - mx) / sum;
          for (int c = 0; c < s.HD; ++c) o[s.qi(b, h, i, c)] += w * v[s.ki(b, h / R, j, c)];
        }
        lse[(size_t(b) * s.NH + h) * s.Tq + i] = mx + std::log(sum);
      }
}

// Double-precision analytic gradients of sum(w * o) of the block's own attention.
void ref_backward(const Blk& s, const VecD& q, const VecD& k, const VecD& v, const VecD& w,
                  VecD& dq, VecD& dk, VecD& dv) {
  VecD o, lse;
  ref_forward(s, q, k, v, o, lse);
  dq.assign(s.nq(), 0.0);
  dk.assign(s.nk(), 0.0);
  dv.assign(s.nk(), 0.0);
  const double sc = 1.0 / std::sqrt(double(s.HD));
  const int R = s.NH / s.NKV;
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int i = 0; i < s.Tq; ++i) {
        const double L = lse[(size_t(b) * s.NH + h) * s.Tq + i];
        if (L == -kInf) continue;
        double D = 0;
        for (int c = 0; c < s.HD; ++c) D += w[s.qi(b, h, i, c)] * o[s.qi(b, h, i, c)];
        for (int j = 0; j < s.Tk; ++j) {
          if (!s.vis(i, j)) continue;
          const int g = h / R;
          double sdot = 0, dp = 0;
          for (int c = 0; c < s.HD; ++c) {
            sdot += q[s.qi(b, h, i, c)] * k[s.ki(b, g, j, c)];
            dp += w[s.qi(b, h, i, c)] * v[s.ki(b, g, j, c)];
          }
          const double P = std::exp(sdot * sc - L);
          const double dS = P * (dp - D);
          for (int c = 0; c < s.HD; ++c) {
            dv[s.ki(b, g, j, c)] += P * w[s.qi(b, h, i, c)];
            dq[s.qi(b, h, i, c)] += dS * k[s.ki(b, g, j, c)] * sc;
            dk[s.ki(b, g, j, c)] += dS * q[s.qi(b, h, i, c)] * sc;
          }
        }
      }
}

struct Inputs {
  VecF q, k, v, w;
};
Inputs make_inputs(const Blk& s, uint64_t seed) {
  return {randn(s.nq(), 1, 1.0f, seed), randn(s.nk(), 2, 1.0f, seed), randn(s.nk(), 3, 1.0f, seed),
          randn(s.nq(), 4, 1.0f, seed)};
}

// Compares the kernel's forward with the reference; lse rows that are -inf must match exactly.
void check_forward(const Blk& s, uint64_t seed) {
  const Inputs in = make_inputs(s, seed);
  VecF o(s.nq(), 7.0f), lse(s.rows(), 7.0f);
  cpu::attention_block_forward(o.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), s.B,
                               s.NH, s.NKV, s.Tq, s.Tk, s.HD, s.qp, s.kp);
  VecD ro, rl;
  ref_forward(s, to_d(in.q), to_d(in.k), to_d(in.v), ro, rl);
  CHECK(rel_err(o, ro) < 2e-6);
  for (size_t r = 0; r < s.rows(); ++r) {
    if (rl[r] == -kInf) {
      REQUIRE(lse[r] == -std::numeric_limits<float>::infinity());
    } else {
      REQUIRE(std::isfinite(lse[r]));
      REQUIRE(std::abs(lse[r] - rl[r]) < 2e-5 * std::max(1.0, std::abs(rl[r])));
    }
  }
}

// [B, H, T, HD] rows [t0, t1) as a contiguous [B, H, t1 - t0, HD] array, and back (adding).
VecF slice_t(const VecF& x, int B, int H, int T, int HD, int t0, int t1) {
  VecF y(size_t(B) * H * (t1 - t0) * HD);
  size_t n = 0;
  for (int bh = 0; bh < B * H; ++bh)
    for (int t = t0; t < t1; ++t)
      for (int c = 0; c < HD; ++c) y[n++] = x[(size_t(bh) * T + t) * HD + c];
  return y;
}
void unslice_t(VecF& x, const VecF& y, int B, int H, int T, int HD, int t0, int t1) {
  size_t n = 0;
  for (int bh = 0; bh < B * H; ++bh)
    for (int t = t0; t < t1; ++t)
      for (int c = 0; c < HD; ++c) x[(size_t(bh) * T + t) * HD + c] = y[n++];
}

// Head-major q [B, NH, T, HD], k, v [B, NKV, T, HD] to the grouped fused qkv
// [B, T, NKV, NH/NKV + 2, HD] of attention.cpp, and its dqkv back.
VecF to_grouped(const VecF& q, const VecF& k, const VecF& v, int B, int T, int NH, int NKV, int HD) {
  const int R = NH / NKV;
  VecF qkv(size_t(B) * T * (NH + 2 * NKV) * HD);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int g = 0; g < NKV; ++g)
        for (int slot = 0; slot < R + 2; ++slot)
          for (int c = 0; c < HD; ++c) {
            const size_t dst = (((size_t(b) * T + t) * NKV + g) * (R + 2) + slot) * HD + c;
            if (slot < R)
              qkv[dst] = q[((size_t(b) * NH + g * R + slot) * T + t) * HD + c];
            else
              qkv[dst] = (slot == R ? k : v)[((size_t(b) * NKV + g) * T + t) * HD + c];
          }
  return qkv;
}
void from_grouped(const VecF& dqkv, VecF& dq, VecF& dk, VecF& dv, int B, int T, int NH, int NKV,
                  int HD) {
  const int R = NH / NKV;
  dq.assign(size_t(B) * NH * T * HD, 0.0f);
  dk.assign(size_t(B) * NKV * T * HD, 0.0f);
  dv.assign(size_t(B) * NKV * T * HD, 0.0f);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int g = 0; g < NKV; ++g)
        for (int slot = 0; slot < R + 2; ++slot)
          for (int c = 0; c < HD; ++c) {
            const float x = dqkv[(((size_t(b) * T + t) * NKV + g) * (R + 2) + slot) * HD + c];
            if (slot < R)
              dq[((size_t(b) * NH + g * R + slot) * T + t) * HD + c] = x;
            else
              (slot == R ? dk : dv)[((size_t(b) * NKV + g) * T + t) * HD + c] = x;
          }
}

}  // namespace

TEST_CASE("attention block forward matches a double-precision reference", "[attention_blocks]") {
  const int hds[] = {16, 64, 24};
  for (int HD : hds) {
    for (int gqa = 0; gqa < 2; ++gqa) {
      const int NH = 4, NKV = gqa ? 2 : 4;
      INFO("HD " << HD << " NKV " << NKV);
      // diagonal (the own chunk of a rank)
      check_forward({2, NH, NKV, 100, 100, HD, 300, 300}, 11);
      // keys entirely in the past: fully visible, Tq != Tk
      check_forward({2, NH, NKV, 70, 130, HD, 500, 200}, 12);
      // partially masked offsets (queries start inside the keys, both directions)
      check_forward({2, NH, NKV, 90, 150, HD, 40, 0}, 13);
      check_forward({2, NH, NKV, 150, 90, HD, 0, 60}, 14);
      check_forward({2, NH, NKV, 129, 65, HD, 1000, 1010}, 15);
      // entirely in the future: fully masked (o = 0, lse = -inf)
      check_forward({2, NH, NKV, 50, 80, HD, 100, 150}, 16);
    }
  }
}

TEST_CASE("attention block forward: no visible key gives o = 0 and lse = -inf",
          "[attention_blocks]") {
  const Blk s{2, 4, 2, 33, 47, 16, 10, 43};  // k_pos = q_pos + Tq: every key in the future
  const Inputs in = make_inputs(s, 5);
  VecF o(s.nq(), 7.0f), lse(s.rows(), 7.0f);
  cpu::attention_block_forward(o.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), s.B,
                               s.NH, s.NKV, s.Tq, s.Tk, s.HD, s.qp, s.kp);
  for (float x : o) REQUIRE(x == 0.0f);
  for (float x : lse) REQUIRE(x == -std::numeric_limits<float>::infinity());
  // the backward of such a block is a no-op
  VecF dq(s.nq(), 1.0f), dk(s.nk(), 2.0f), dv(s.nk(), 3.0f), delta(s.rows(), 0.0f);
  cpu::attention_block_backward(dq.data(), dk.data(), dv.data(), in.q.data(), in.k.data(),
                                in.v.data(), in.w.data(), lse.data(), delta.data(), s.B, s.NH,
                                s.NKV, s.Tq, s.Tk, s.HD, s.qp, s.kp);
  for (float x : dq) REQUIRE(x == 1.0f);
  for (float x : dk) REQUIRE(x == 2.0f);
  for (float x : dv) REQUIRE(x == 3.0f);
}

TEST_CASE("attention_merge and attention_delta", "[attention_blocks]") {
  const size_t rows = 6;
  const int HD = 5;
  const float ninf = -std::numeric_limits<float>::infinity();
  VecF o = randn(rows * HD, 1), o2 = randn(rows * HD, 2);
  VecF lse = {0.5f, ninf, 2.0f, ninf, -3.0f, 40.0f};
  VecF lse2 = {1.5f, 0.25f, ninf, ninf, -3.0f, -40.0f};
  VecF m = o, ml = lse;
  cpu::attention_merge(m.data(), ml.data(), o2.data(), lse2.data(), rows, HD);
  for (size_t r = 0; r < rows; ++r) {
    if (lse[r] == ninf && lse2[r] == ninf) {
      REQUIRE(ml[r] == ninf);
      continue;
    }
    if (lse2[r] == ninf || lse[r] == ninf) {  // the other side kept exactly
      const bool keep = lse2[r] == ninf;
      REQUIRE(ml[r] == (keep ? lse[r] : lse2[r]));
      for (int c = 0; c < HD; ++c) REQUIRE(m[r * HD + c] == (keep ? o : o2)[r * HD + c]);
      continue;
    }
    const double a = lse[r], b = lse2[r], l = std::log(std::exp(a) + std::exp(b));
    REQUIRE(std::abs(ml[r] - l) < 1e-6 * std::max(1.0, std::abs(l)));
    for (int c = 0; c < HD; ++c) {
      const double want = std::exp(a - l) * o[r * HD + c] + std::exp(b - l) * o2[r * HD + c];
      REQUIRE(std::abs(m[r * HD + c] - want) < 1e-6);
    }
  }
  VecF delta(rows);
  cpu::attention_delta(delta.data(), o.data(), o2.data(), rows, HD);
  for (size_t r = 0; r < rows; ++r) {
    double d = 0;
    for (int c = 0; c < HD; ++c) d += double(o[r * HD + c]) * o2[r * HD + c];
    REQUIRE(std::abs(delta[r] - d) < 1e-5);
  }
}

TEST_CASE("attention block backward matches analytic gradients and finite differences",
          "[attention_blocks]") {
  const Blk cases[] = {{2, 4, 2, 100, 100, 16, 300, 300},  // diagonal, GQA
                       {2, 4, 4, 70, 130, 64, 500, 200},   // fully visible
                       {2, 4, 2, 90, 150, 24, 40, 0},      // partially masked
                       {2, 4, 1, 150, 90, 64, 0, 60}};     // partially masked, empty rows
  for (const Blk& s : cases) {
    INFO("Tq " << s.Tq << " Tk " << s.Tk << " HD " << s.HD << " NKV " << s.NKV);
    const Inputs in = make_inputs(s, 21);
    VecF o(s.nq()), lse(s.rows()), delta(s.rows());
    cpu::attention_block_forward(o.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), s.B,
                                 s.NH, s.NKV, s.Tq, s.Tk, s.HD, s.qp, s.kp);
    cpu::attention_delta(delta.data(), in.w.data(), o.data(), s.rows(), s.HD);
    VecF dq(s.nq(), 0.0f), dk(s.nk(), 0.0f), dv(s.nk(), 0.0f);
    auto backward = [&] {
      cpu::attention_block_backward(dq.data(), dk.data(), dv.data(), in.q.data(), in.k.data(),
                                    in.v.data(), in.w.data(), lse.data(), delta.data(), s.B, s.NH,
                                    s.NKV, s.Tq, s.Tk, s.HD, s.qp, s.kp);
    };
    backward();
    VecD rq, rk, rv;
    const VecD q = to_d(in.q), k = to_d(in.k), v = to_d(in.v), w = to_d(in.w);
    ref_backward(s, q, k, v, w, rq, rk, rv);
    CHECK(rel_err(dq, rq) < 2e-5);
    CHECK(rel_err(dk, rk) < 2e-5);
    CHECK(rel_err(dv, rv) < 2e-5);

    // the reference's gradients against central differences of sum(w * o), a few elements each
    auto loss_q = [&](const VecD& x) { VecD oo, ll; ref_forward(s, x, k, v, oo, ll); return dot(oo, w); };
    auto loss_k = [&](const VecD& x) { VecD oo, ll; ref_forward(s, q, x, v, oo, ll); return dot(oo, w); };
    auto loss_v = [&](const VecD& x) { VecD oo, ll; ref_forward(s, q, k, x, oo, ll); return dot(oo, w); };
    const std::vector<size_t> iq = {0, s.nq() / 3, s.nq() - 1}, ik = {1, s.nk() / 2, s.nk() - 2};
    const VecD fq = fd_grad(q, loss_q, 1e-5, iq), fk = fd_grad(k, loss_k, 1e-5, ik),
               fv = fd_grad(v, loss_v, 1e-5, ik);
    for (size_t i : iq) CHECK(std::abs(dq[i] - fq[i]) < 1e-4 * std::max(1.0, std::abs(fq[i])));
    for (size_t i : ik) {
      CHECK(std::abs(dk[i] - fk[i]) < 1e-4 * std::max(1.0, std::abs(fk[i])));
      CHECK(std::abs(dv[i] - fv[i]) < 1e-4 * std::max(1.0, std::abs(fv[i])));
    }

    // accumulation: a second call adds the same again
    const VecF dq1 = dq, dk1 = dk, dv1 = dv;
    backward();
    for (size_t i = 0; i < dq.size(); ++i) REQUIRE(dq[i] == 2.0f * dq1[i]);
    for (size_t i = 0; i < dk.size(); ++i) REQUIRE(dk[i] == 2.0f * dk1[i]);
    for (size_t i = 0; i < dv.size(); ++i) REQUIRE(dv[i] == 2.0f * dv1[i]);
  }
}

TEST_CASE("attention blocks: results do not depend on the thread count", "[attention_blocks]") {
  const Blk s{2, 4, 2, 150, 130, 64, 100, 80};
  const Inputs in = make_inputs(s, 31);
  auto run = [&](VecF& o, VecF& lse, VecF& dq, VecF& dk, VecF& dv) {
    o.assign(s.nq(), 0.0f);
    lse.assign(s.rows(), 0.0f);
    dq.assign(s.nq(), 0.0f);
    dk.assign(s.nk(), 0.0f);
    dv.assign(s.nk(), 0.0f);
    VecF delta(s.rows());
    cpu::attention_block_forward(o.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), s.B,
                                 s.NH, s.NKV, s.Tq, s.Tk, s.HD, s.qp, s.kp);
    cpu::attention_delta(delta.data(), in.w.data(), o.data(), s.rows(), s.HD);
    cpu::attention_block_backward(dq.data(), dk.data(), dv.data(), in.q.data(), in.k.data(),
                                  in.v.data(), in.w.data(), lse.data(), delta.data(), s.B, s.NH,
                                  s.NKV, s.Tq, s.Tk, s.HD, s.qp, s.kp);
  };
  VecF o1, l1, q1, k1, v1, o2, l2, q2, k2, v2;
  with_threads(1, [&] { run(o1, l1, q1, k1, v1); });
  with_threads(3, [&] { run(o2, l2, q2, k2, v2); });
  CHECK(same_bits(o1, o2));
  CHECK(same_bits(l1, l2));
  CHECK(same_bits(q1, q2));
  CHECK(same_bits(k1, k2));
  CHECK(same_bits(v1, v2));
}

// A causal sequence of T tokens, queries cut into chunks and keys into blocks (as the ranks of
// context parallelism hold them): forward every (query chunk, key block), merge, backward every
// block with the merged lse and delta. Must equal the whole causal attention (double reference)
// and the fused kernel of attention.cpp.
TEST_CASE("attention blocks merged over key blocks equal the whole causal attention",
          "[attention_blocks]") {
  struct Split {
    int NH, NKV, HD;
    std::vector<int> qcuts, kcuts;  // chunk boundaries, from 0 to T
  };
  const int T = 192;
  const Split splits[] = {{4, 2, 64, {0, T}, {0, 96, T}},
                          {4, 4, 16, {0, 70, T}, {0, 40, 130, T}},
                          {4, 2, 24, {0, 48, 96, 144, T}, {0, 48, 96, 144, T}},
                          {4, 1, 64, {0, 100, T}, {0, 33, 64, 150, T}}};
  for (const Split& sp : splits) {
    const int B = 2, NH = sp.NH, NKV = sp.NKV, HD = sp.HD;
    INFO("NKV " << NKV << " HD " << HD << " blocks " << sp.kcuts.size() - 1);
    const Blk whole{B, NH, NKV, T, T, HD, 0, 0};
    const Inputs in = make_inputs(whole, 41);
    VecF o(whole.nq()), lse(whole.rows()), dq(whole.nq()), dk(whole.nk()), dv(whole.nk());
    // forward: per query chunk, merge over key blocks
    std::vector<VecF> oc, lc;
    for (size_t a = 0; a + 1 < sp.qcuts.size(); ++a) {
      const int q0 = sp.qcuts[a], q1 = sp.qcuts[a + 1], tq = q1 - q0;
      const VecF qs = slice_t(in.q, B, NH, T, HD, q0, q1);
      VecF om(size_t(B) * NH * tq * HD), lm(size_t(B) * NH * tq);
      for (size_t c = 0; c + 1 < sp.kcuts.size(); ++c) {
        const int k0 = sp.kcuts[c], k1 = sp.kcuts[c + 1], tk = k1 - k0;
        const VecF ks = slice_t(in.k, B, NKV, T, HD, k0, k1), vs = slice_t(in.v, B, NKV, T, HD, k0, k1);
        VecF ob(om.size()), lb(lm.size());
        ops::attention_block_forward(Device::CPU, (c == 0 ? om : ob).data(), (c == 0 ? lm : lb).data(),
                                     qs.data(), ks.data(), vs.data(), B, NH, NKV, tq, tk, HD, q0, k0);
        if (c > 0) ops::attention_merge(Device::CPU, om.data(), lm.data(), ob.data(), lb.data(), lm.size(), HD);
      }
      unslice_t(o, om, B, NH, T, HD, q0, q1);
      unslice_t(lse, lm, B, NH, T, 1, q0, q1);
    }
    VecD ro, rl;
    ref_forward(whole, to_d(in.q), to_d(in.k), to_d(in.v), ro, rl);
    CHECK(rel_err(o, ro) < 2e-6);
    CHECK(rel_err(lse, rl) < 2e-6);

    // the fused kernel on the grouped layout
    const VecF qkv = to_grouped(in.q, in.k, in.v, B, T, NH, NKV, HD);
    VecF fo(size_t(B) * T * NH * HD), fl(whole.rows());
    cpu::attention_forward(fo.data(), fl.data(), qkv.data(), B, T, NH, NKV, HD);
    VecF fo_hm(whole.nq());  // [B, T, NH, HD] -> [B, NH, T, HD]
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < NH; ++h)
          for (int c = 0; c < HD; ++c)
            fo_hm[whole.qi(b, h, t, c)] = fo[((size_t(b) * T + t) * NH + h) * HD + c];
    CHECK(rel_err(o, fo_hm) < 1e-5);
    CHECK(rel_err(lse, fl) < 1e-5);

    // backward: delta from the merged o, then every block with the full lse and delta
    VecF delta(whole.rows());
    ops::attention_delta(Device::CPU, delta.data(), in.w.data(), o.data(), whole.rows(), HD);
    for (size_t a = 0; a + 1 < sp.qcuts.size(); ++a) {
      const int q0 = sp.qcuts[a], q1 = sp.qcuts[a + 1], tq = q1 - q0;
      const VecF qs = slice_t(in.q, B, NH, T, HD, q0, q1), ws = slice_t(in.w, B, NH, T, HD, q0, q1);
      const VecF ls = slice_t(lse, B, NH, T, 1, q0, q1), ds = slice_t(delta, B, NH, T, 1, q0, q1);
      VecF dqs(qs.size(), 0.0f);
      for (size_t c = 0; c + 1 < sp.kcuts.size(); ++c) {
        const int k0 = sp.kcuts[c], k1 = sp.kcuts[c + 1], tk = k1 - k0;
        const VecF ks = slice_t(in.k, B, NKV, T, HD, k0, k1), vs = slice_t(in.v, B, NKV, T, HD, k0, k1);
        VecF dks = slice_t(dk, B, NKV, T, HD, k0, k1), dvs = slice_t(dv, B, NKV, T, HD, k0, k1);
        ops::attention_block_backward(Device::CPU, dqs.data(), dks.data(), dvs.data(), qs.data(),
                                      ks.data(), vs.data(), ws.data(), ls.data(), ds.data(), B, NH,
                                      NKV, tq, tk, HD, q0, k0);
        unslice_t(dk, dks, B, NKV, T, HD, k0, k1);
        unslice_t(dv, dvs, B, NKV, T, HD, k0, k1);
      }
      unslice_t(dq, dqs, B, NH, T, HD, q0, q1);
    }
    VecD rq, rk, rv;
    ref_backward(whole, to_d(in.q), to_d(in.k), to_d(in.v), to_d(in.w), rq, rk, rv);
    CHECK(rel_err(dq, rq) < 2e-5);
    CHECK(rel_err(dk, rk) < 2e-5);
    CHECK(rel_err(dv, rv) < 2e-5);

    // the fused backward (dout in [B, T, NH, HD])
    VecF wt(fo.size());
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < NH; ++h)
          for (int c = 0; c < HD; ++c)
            wt[((size_t(b) * T + t) * NH + h) * HD + c] = in.w[whole.qi(b, h, t, c)];
    VecF dqkv(qkv.size());
    cpu::attention_backward(dqkv.data(), wt.data(), qkv.data(), fo.data(), fl.data(), B, T, NH, NKV, HD);
    VecF fq, fk, fv;
    from_grouped(dqkv, fq, fk, fv, B, T, NH, NKV, HD);
    CHECK(rel_err(dq, fq) < 1e-5);
    CHECK(rel_err(dk, fk) < 1e-5);
    CHECK(rel_err(dv, fv) < 1e-5);
  }
}

TEST_CASE("attention blocks on a CUDA device throw", "[attention_blocks]") {
  float x = 0.0f;
  REQUIRE_THROWS_AS(ops::attention_block_forward(Device::CUDA, &x, &x, &x, &x, &x, 1, 1, 1, 1, 1,
                                                 1, 0, 0),
                    std::runtime_error);
  REQUIRE_THROWS_AS(ops::attention_merge(Device::CUDA, &x, &x, &x, &x, 1, 1), std::runtime_error);
  REQUIRE_THROWS_AS(ops::attention_delta(Device::CUDA, &x, &x, &x, 1, 1), std::runtime_error);
  REQUIRE_THROWS_AS(ops::attention_block_backward(Device::CUDA, &x, &x, &x, &x, &x, &x, &x, &x, &x,
                                                  1, 1, 1, 1, 1, 1, 0, 0),
                    std::runtime_error);
  REQUIRE_THROWS_AS(cpu::attention_block_forward(&x, &x, &x, &x, &x, 1, 3, 2, 1, 1, 1, 0, 0),
                    std::invalid_argument);
}
