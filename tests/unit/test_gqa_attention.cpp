// Grouped-query attention (GQA) in the fused causal attention (kernels/cpu/attention.cpp,
// attention_bf16.cpp): NH query heads share NKV key/value heads, qkv in Megatron's grouped fused
// layout [B, T, NKV, NH/NKV + 2, HD]. Checked against a double-precision reference written from
// the definition (forward and analytic backward), the reference's backward against central
// finite differences, and GQA against multi-head attention on a qkv where every head gets a copy
// of its group's k and v (dk, dv of a group = the sum of the copies' gradients).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"
#include "kernels/philox.h"
#include "common/kernel_checks.h"

namespace cpu = lossytp::cpu;
namespace ops = lossytp::ops;
using lossytp::Device;
using namespace lossytp::testing;

namespace {

VecF bf16_rounded(const VecF& x) {
  VecF r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = lossytp::bf16_round(x[i]);
  return r;
}

// A problem and the grouped layout, spelled out: a token holds NKV groups of R = NH / NKV q
// vectors, then the group's k, then its v.
struct Gqa {
  int B, T, NH, NKV, HD;
  int R() const { return NH / NKV; }
  size_t tok() const { return size_t(NH + 2 * NKV) * HD; }
  size_t nqkv() const { return size_t(B) * T * tok(); }
  size_t nout() const { return size_t(B) * T * NH * HD; }
  size_t nlse() const { return size_t(B) * NH * T; }
  size_t base(int b, int t) const { return (size_t(b) * T + t) * tok(); }
  // query head h = g R + r is the r-th q of group g
  size_t q(int b, int t, int h) const { return base(b, t) + (size_t(h / R()) * (R() + 2) + h % R()) * HD; }
  size_t k(int b, int t, int g) const { return base(b, t) + (size_t(g) * (R() + 2) + R()) * HD; }
  size_t v(int b, int t, int g) const { return k(b, t, g) + HD; }
  size_t o(int b, int t, int h) const { return ((size_t(b) * T + t) * NH + h) * HD; }
};

// out = softmax(q k^T / sqrt(HD)) v per head, causal, with the k and v of the head's group;
// lse[b, h, t]. Optionally the analytic backward for dout: dqkv (same layout as qkv).
void reference(const VecD& x, const Gqa& s, VecD* out, VecD* lse, const VecD* dout = nullptr,
               VecD* dqkv = nullptr) {
  const int T = s.T, HD = s.HD;
  const double scale = 1.0 / std::sqrt(double(HD));
  out->assign(s.nout(), 0.0);
  lse->assign(s.nlse(), 0.0);
  if (dqkv) dqkv->assign(s.nqkv(), 0.0);
  std::vector<double> P(T), dP(T);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h) {
      const int g = h / s.R();
      for (int t = 0; t < T; ++t) {
        double m = -INFINITY;
        for (int j = 0; j <= t; ++j) {
          double d = 0.0;
          for (int c = 0; c < HD; ++c) d += x[s.q(b, t, h) + c] * x[s.k(b, j, g) + c];
          P[j] = d * scale;
          m = std::max(m, P[j]);
        }
        double l = 0.0;
        for (int j = 0; j <= t; ++j) l += std::exp(P[j] - m);
        for (int j = 0; j <= t; ++j) P[j] = std::exp(P[j] - m) / l;
        (*lse)[(size_t(b) * s.NH + h) * T + t] = m + std::log(l);
        for (int c = 0; c < HD; ++c) {
          double acc = 0.0;
          for (int j = 0; j <= t; ++j) acc += P[j] * x[s.v(b, j, g) + c];
          (*out)[s.o(b, t, h) + c] = acc;
        }
        if (!dqkv) continue;
        // dP = dO v^T, dS = P (dP - sum_j P dP), dq = scale dS k, dk += scale dS q, dv += P dO
        const double* go = dout->data() + s.o(b, t, h);
        double D = 0.0;
        for (int j = 0; j <= t; ++j) {
          double d = 0.0;
          for (int c = 0; c < HD; ++c) d += go[c] * x[s.v(b, j, g) + c];
          dP[j] = d;
          D += P[j] * d;
        }
        for (int j = 0; j <= t; ++j) {
          const double dS = P[j] * (dP[j] - D);
          for (int c = 0; c < HD; ++c) {
            (*dqkv)[s.q(b, t, h) + c] += scale * dS * x[s.k(b, j, g) + c];
            (*dqkv)[s.k(b, j, g) + c] += scale * dS * x[s.q(b, t, h) + c];
            (*dqkv)[s.v(b, j, g) + c] += P[j] * go[c];
          }
        }
      }
    }
}

struct Result {
  VecF out, lse, dqkv;
};

// forward then backward; dqkv starts as NaN (it must be overwritten everywhere)
Result run(bool bf16, const VecF& qkv, const VecF& dout, const Gqa& s) {
  Result r{VecF(s.nout()), VecF(s.nlse()), VecF(s.nqkv(), NAN)};
  if (bf16) {
    cpu::attention_forward_bf16(r.out.data(), r.lse.data(), qkv.data(), s.B, s.T, s.NH, s.NKV, s.HD);
    cpu::attention_backward_bf16(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(),
                                 s.B, s.T, s.NH, s.NKV, s.HD);
  } else {
    cpu::attention_forward(r.out.data(), r.lse.data(), qkv.data(), s.B, s.T, s.NH, s.NKV, s.HD);
    cpu::attention_backward(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(), s.B,
                            s.T, s.NH, s.NKV, s.HD);
  }
  return r;
}

// The multi-head problem with the same query heads, every head with a copy of its group's k, v.
Gqa as_mha(const Gqa& s) { return Gqa{s.B, s.T, s.NH, s.NH, s.HD}; }

VecF expand_to_mha(const VecF& qkv, const Gqa& s) {
  const Gqa m = as_mha(s);
  VecF x(m.nqkv());
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < s.T; ++t)
      for (int h = 0; h < s.NH; ++h) {
        const int g = h / s.R();
        std::copy_n(&qkv[s.q(b, t, h)], s.HD, &x[m.q(b, t, h)]);
        std::copy_n(&qkv[s.k(b, t, g)], s.HD, &x[m.k(b, t, h)]);
        std::copy_n(&qkv[s.v(b, t, g)], s.HD, &x[m.v(b, t, h)]);
      }
  return x;
}

// The gradient of the grouped qkv from the MHA one: dq as it is, dk and dv of a group summed over
// its heads (in double).
VecD reduce_from_mha(const VecF& dmha, const Gqa& s) {
  const Gqa m = as_mha(s);
  VecD d(s.nqkv(), 0.0);
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < s.T; ++t)
      for (int h = 0; h < s.NH; ++h) {
        const int g = h / s.R();
        for (int c = 0; c < s.HD; ++c) {
          d[s.q(b, t, h) + c] = dmha[m.q(b, t, h) + c];
          d[s.k(b, t, g) + c] += dmha[m.k(b, t, h) + c];
          d[s.v(b, t, g) + c] += dmha[m.v(b, t, h) + c];
        }
      }
  return d;
}

// NH / NKV in {1, 2, 4, 8 -> 1}, HD in {32, 64, 48}, T below, at and past the 64-token tile.
const std::vector<Gqa> kShapes = {
    {2, 100, 4, 4, 32},  // multi-head
    {2, 100, 4, 2, 32},  // 2 heads a group
    {1, 100, 8, 2, 64},  // 4 heads a group
    {2, 100, 8, 1, 48},  // 8 -> 1 (multi-query)
    {1, 64, 6, 3, 48},   // exactly one tile
    {1, 130, 4, 1, 64},  // three tiles, 4 -> 1
    {3, 37, 2, 1, 32},   // B > 1, short T
    {1, 1, 4, 2, 32},    // one token: P = 1, dq = dk = 0
};

}  // namespace

TEST_CASE("GQA attention forward and backward against the double-precision reference", "[kernels][gqa]") {
  for (const Gqa& s : kShapes) {
    INFO("B " << s.B << " T " << s.T << " NH " << s.NH << " NKV " << s.NKV << " HD " << s.HD);
    const VecF qkv = randn(s.nqkv(), 1 + s.T + 7 * s.NKV, 1.5f), dout = randn(s.nout(), 2 + s.T);
    const Result r = run(false, qkv, dout, s);
    VecD out, lse, dqkv;
    const VecD dd = to_d(dout);
    reference(to_d(qkv), s, &out, &lse, &dd, &dqkv);
    CHECK(rel_err(r.out, out) < 5e-6);
    CHECK(rel_err(r.lse, lse) < 2e-6);
    CHECK(rel_err(r.dqkv, dqkv) < 2e-5);
  }
}

TEST_CASE("GQA attention: the reference's backward against finite differences", "[kernels][gqa]") {
  // The analytic backward of the reference (used above) against central differences of the scalar
  // loss sum(out * G), computed in double, at sampled elements of q, k and v of every group.
  for (const Gqa& s : {Gqa{1, 70, 4, 2, 32}, Gqa{2, 20, 4, 1, 48}}) {
    INFO("B " << s.B << " T " << s.T << " NH " << s.NH << " NKV " << s.NKV << " HD " << s.HD);
    const VecD x = to_d(randn(s.nqkv(), 40 + s.T)), G = to_d(randn(s.nout(), 41 + s.T));
    VecD out, lse, dx;
    reference(x, s, &out, &lse, &G, &dx);
    auto loss = [&](const VecD& xx) {
      VecD o, l;
      reference(xx, s, &o, &l);
      double acc = 0.0;
      for (size_t i = 0; i < o.size(); ++i) acc += o[i] * G[i];
      return acc;
    };
    VecD got, want;
    const double eps = 1e-5;
    for (size_t i = 0; i < s.nqkv(); i += 37) {
      VecD xp = x, xm = x;
      xp[i] += eps;
      xm[i] -= eps;
      want.push_back((loss(xp) - loss(xm)) / (2 * eps));
      got.push_back(dx[i]);
    }
    CHECK(rel_err(got, want) < 1e-6);
    // and the kernel against the same differences
    const Result r = run(false, VecF(x.begin(), x.end()), VecF(G.begin(), G.end()), s);
    VecF kern;
    for (size_t i = 0; i < s.nqkv(); i += 37) kern.push_back(r.dqkv[i]);
    CHECK(rel_err(kern, want) < 2e-5);
  }
}

TEST_CASE("GQA attention equals multi-head attention on copied k and v", "[kernels][gqa]") {
  for (const Gqa& s : kShapes) {
    if (s.NKV == s.NH) continue;
    INFO("B " << s.B << " T " << s.T << " NH " << s.NH << " NKV " << s.NKV << " HD " << s.HD);
    const VecF qkv = randn(s.nqkv(), 50 + s.T + s.NKV), dout = randn(s.nout(), 51 + s.T);
    const Result g = run(false, qkv, dout, s);
    const Result m = run(false, expand_to_mha(qkv, s), dout, as_mha(s));
    // every head runs exactly as in the multi-head kernel: the same bits for out, lse (and dq)
    CHECK(same_bits(g.out, m.out));
    CHECK(same_bits(g.lse, m.lse));
    // dk, dv: the group's heads accumulate in one fp32 buffer instead of being summed afterwards
    // (another order of the same additions)
    CHECK(rel_err(g.dqkv, reduce_from_mha(m.dqkv, s)) < 5e-6);
    // the bf16 emulation too (rounding commutes with copying)
    const Result gb = run(true, qkv, dout, s);
    const Result mb = run(true, expand_to_mha(qkv, s), dout, as_mha(s));
    CHECK(same_bits(gb.out, mb.out));
    CHECK(same_bits(gb.lse, mb.lse));
    CHECK(rel_err(gb.dqkv, reduce_from_mha(mb.dqkv, s)) < 5e-6);
  }
}

TEST_CASE("GQA attention: thread-independent, overwriting, causal", "[kernels][gqa]") {
  const Gqa s{2, 150, 8, 2, 32};
  const VecF qkv = randn(s.nqkv(), 60);
  VecF dout = randn(s.nout(), 61);
  // dout zero after token t1: tokens > t1 get exactly zero gradient
  const int t1 = 90;
  for (int b = 0; b < s.B; ++b)
    for (int t = t1 + 1; t < s.T; ++t)
      std::fill_n(&dout[s.o(b, t, 0)], size_t(s.NH) * s.HD, 0.0f);
  Result r1, r2, r3;
  with_threads(1, [&] { r1 = run(false, qkv, dout, s); });
  with_threads(2, [&] { r2 = run(false, qkv, dout, s); });
  with_threads(3, [&] { r3 = run(false, qkv, dout, s); });
  CHECK(same_bits(r1.out, r2.out));
  CHECK(same_bits(r1.lse, r2.lse));
  CHECK(same_bits(r1.dqkv, r2.dqkv));
  CHECK(same_bits(r1.dqkv, r3.dqkv));
  bool finite = true, zero_after = true, nonzero_before = false;
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < s.T; ++t)
      for (size_t i = 0; i < s.tok(); ++i) {
        const float v = r1.dqkv[s.base(b, t) + i];
        finite = finite && std::isfinite(v);
        if (t > t1) zero_after = zero_after && v == 0.0f;
        else nonzero_before = nonzero_before || v != 0.0f;
      }
  CHECK(finite);
  CHECK(zero_after);
  CHECK(nonzero_before);
}

TEST_CASE("GQA bf16 attention: the fp32 GQA on rounded inputs, within bf16 of the reference", "[kernels][gqa][bf16]") {
  for (const Gqa& s : kShapes) {
    INFO("B " << s.B << " T " << s.T << " NH " << s.NH << " NKV " << s.NKV << " HD " << s.HD);
    const VecF qkv = randn(s.nqkv(), 70 + s.T + s.NKV), dout = randn(s.nout(), 71 + s.T);
    const Result b = run(true, qkv, dout, s);
    const Result f = run(false, bf16_rounded(qkv), bf16_rounded(dout), s);
    CHECK(same_bits(b.out, f.out));
    CHECK(same_bits(b.lse, f.lse));
    CHECK(same_bits(b.dqkv, f.dqkv));
    // against the exact attention of the unrounded inputs: bf16 rounding of q, k, v, dout
    VecD out, lse, dqkv;
    const VecD dd = to_d(dout);
    reference(to_d(qkv), s, &out, &lse, &dd, &dqkv);
    CHECK(rel_err(b.out, out) < 2e-2);
    CHECK(rel_err(b.lse, lse) < 2e-2);
    CHECK(rel_err(b.dqkv, dqkv) < 2e-2);
    if (s.T > 1) CHECK(rel_err(b.dqkv, dqkv) > 1e-6);  // it does round
  }
}

TEST_CASE("GQA attention: NH not a multiple of NKV is rejected", "[kernels][gqa]") {
  const Gqa s{1, 8, 4, 4, 16};  // buffers large enough for any NKV <= 4
  VecF qkv = randn(s.nqkv(), 80), out(s.nout()), lse(s.nlse()), dqkv(s.nqkv());
  for (int nkv : {3, 0, -2}) {
    INFO("NKV " << nkv);
    CHECK_THROWS_AS(cpu::attention_forward(out.data(), lse.data(), qkv.data(), 1, 8, 4, nkv, 16),
                    std::invalid_argument);
    CHECK_THROWS_AS(cpu::attention_backward(dqkv.data(), out.data(), qkv.data(), out.data(),
                                            lse.data(), 1, 8, 4, nkv, 16),
                    std::invalid_argument);
    CHECK_THROWS_AS(cpu::attention_forward_bf16(out.data(), lse.data(), qkv.data(), 1, 8, 4, nkv, 16),
                    std::invalid_argument);
    CHECK_THROWS_AS(cpu::attention_backward_bf16(dqkv.data(), out.data(), qkv.data(), out.data(),
                                                 lse.data(), 1, 8, 4, nkv, 16),
                    std::invalid_argument);
  }
}

TEST_CASE("ops:: attention without NKV is multi-head attention", "[kernels][gqa]") {
  // the old signatures (kept for callers without GQA) are NKV = NH
  const Gqa s{2, 70, 3, 3, 24};
  const VecF qkv = randn(s.nqkv(), 90), dout = randn(s.nout(), 91);
  for (bool bf16 : {false, true}) {
    INFO("bf16 " << bf16);
    const Result want = run(bf16, qkv, dout, s);
    Result r{VecF(s.nout()), VecF(s.nlse()), VecF(s.nqkv(), NAN)};
    if (bf16) {
      ops::attention_forward_bf16(Device::CPU, r.out.data(), r.lse.data(), qkv.data(), s.B, s.T, s.NH, s.HD);
      ops::attention_backward_bf16(Device::CPU, r.dqkv.data(), dout.data(), qkv.data(), r.out.data(),
                                   r.lse.data(), s.B, s.T, s.NH, s.HD);
    } else {
      ops::attention_forward(Device::CPU, r.out.data(), r.lse.data(), qkv.data(), s.B, s.T, s.NH, s.HD);
      ops::attention_backward(Device::CPU, r.dqkv.data(), dout.data(), qkv.data(), r.out.data(),
                              r.lse.data(), s.B, s.T, s.NH, s.HD);
    }
    CHECK(same_bits(r.out, want.out));
    CHECK(same_bits(r.lse, want.lse));
    CHECK(same_bits(r.dqkv, want.dqkv));
  }
}
