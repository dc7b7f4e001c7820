// Unit tests of the Llama kernels (kernels/cpu/ops.h: rmsnorm, rope, swiglu, fill_cols, and
// layernorm's eps) against double-precision references and central finite differences of
// those references. Odd sizes on purpose (vector remainders). Errors are inf-norm relative,
// max|got - want| / max|want|, unless stated otherwise.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/ops.h"
#include "kernels/philox.h"
#include "common/kernel_checks.h"

namespace cpu = lossytp::cpu;
namespace ops = lossytp::ops;
using lossytp::Device;
using namespace lossytp::testing;

namespace {

// ---------------------------------------------------------------- references (double)

VecD ref_rmsnorm(const VecD& x, const VecD& w, int N, int C, double eps) {
  VecD y(x.size());
  for (int n = 0; n < N; ++n) {
    double ss = 0.0;
    for (int c = 0; c < C; ++c) ss += x[n * C + c] * x[n * C + c];
    const double r = 1.0 / std::sqrt(ss / C + eps);
    for (int c = 0; c < C; ++c) y[n * C + c] = x[n * C + c] * r * w[c];
  }
  return y;
}

VecD ref_layernorm(const VecD& x, const VecD& w, const VecD& b, int N, int C, double eps) {
  VecD y(x.size());
  for (int n = 0; n < N; ++n) {
    double m = 0.0, v = 0.0;
    for (int c = 0; c < C; ++c) m += x[n * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += (x[n * C + c] - m) * (x[n * C + c] - m);
    v /= C;
    const double r = 1.0 / std::sqrt(v + eps);
    for (int c = 0; c < C; ++c) y[n * C + c] = (x[n * C + c] - m) * r * w[c] + b[c];
  }
  return y;
}

struct RopeShape {
  int B, T, NH, NKV, HD, rot;
};

// Hugging Face's formulation on every q and k head: x_rot = x * cos2 + rotate_half(x) * sin2
// over the first rot channels, with cos2 = [cos, cos], sin2 = [sin, sin] and
// rotate_half([x1, x2]) = [-x2, x1]; `inverse` negates sin. The role of head slot k of a token
// (q, k or v) is read off the grouped layout: slot k % (NH/NKV + 2) < NH/NKV is q, == NH/NKV k.
VecD ref_rope(const VecD& qkv, const VecF& cos, const VecF& sin, const RopeShape& s, bool inverse) {
  VecD out = qkv;
  const int slots = s.NH + 2 * s.NKV, per_group = s.NH / s.NKV + 2, h = s.rot / 2;
  VecD x(s.rot), rh(s.rot);
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < s.T; ++t)
      for (int k = 0; k < slots; ++k) {
        if (k % per_group == per_group - 1) continue;  // v
        double* head = &out[(static_cast<size_t>(b * s.T + t) * slots + k) * s.HD];
        for (int i = 0; i < s.rot; ++i) x[i] = head[i];
        for (int i = 0; i < s.rot; ++i) rh[i] = i < h ? -x[i + h] : x[i - h];
        for (int i = 0; i < s.rot; ++i) {
          const double c = cos[t * h + i % h], sn = (inverse ? -1.0 : 1.0) * sin[t * h + i % h];
          head[i] = x[i] * c + rh[i] * sn;
        }
      }
  return out;
}

// cos/sin tables [T, rot/2] for arbitrary positions pos0 + 3 t (a context-parallel shard would
// pass its own), Llama's frequencies 500000^(-2i/rot).
void rope_tables(int T, int rot, VecF& cos, VecF& sin, int pos0 = 11) {
  const int h = rot / 2;
  cos.assign(static_cast<size_t>(T) * h, 0.0f);
  sin.assign(static_cast<size_t>(T) * h, 0.0f);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < h; ++i) {
      const double a = (pos0 + 3.0 * t) * std::pow(500000.0, -2.0 * i / rot);
      cos[t * h + i] = static_cast<float>(std::cos(a));
      sin[t * h + i] = static_cast<float>(std::sin(a));
    }
}

size_t rope_size(const RopeShape& s) {
  return static_cast<size_t>(s.B) * s.T * (s.NH + 2 * s.NKV) * s.HD;
}

double silu(double g) { return g / (1.0 + std::exp(-g)); }

VecD ref_swiglu(const VecD& inp, int N, int F) {
  VecD out(static_cast<size_t>(N) * F);
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < F; ++f)
      out[n * F + f] = silu(inp[n * 2 * F + f]) * inp[n * 2 * F + F + f];
  return out;
}

}  // namespace

// ===================================================================== RMSNorm

TEST_CASE("rmsnorm forward/backward: reference, finite differences, accumulation", "[kernels][llama]") {
  const int N = 7, C = 37;
  VecF x = randn(N * C, 1, 2.0f), w = randn(C, 2), G = randn(N * C, 3);
  for (int c = 0; c < C; ++c) x[C + c] += 4.0f;  // a row with a large mean: nothing subtracted
  for (const float eps : {1e-5f, 1e-6f, 0.3f}) {
    INFO("eps " << eps);
    VecF y(N * C), rstd(N);
    cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    const VecD xd = to_d(x), wd = to_d(w), Gd = to_d(G);
    CHECK(rel_err(y, ref_rmsnorm(xd, wd, N, C, eps)) < 2e-6);
    for (int n = 0; n < N; ++n) {
      double ss = 0.0;
      for (int c = 0; c < C; ++c) ss += xd[n * C + c] * xd[n * C + c];
      CHECK(std::abs(rstd[n] - 1.0 / std::sqrt(ss / C + eps)) < 2e-6 / std::sqrt(ss / C + eps));
    }

    const VecD g_x = fd_grad(xd, [&](const VecD& v) { return dot(ref_rmsnorm(v, wd, N, C, eps), Gd); }, 1e-5);
    const VecD g_w = fd_grad(wd, [&](const VecD& v) { return dot(ref_rmsnorm(xd, v, N, C, eps), Gd); }, 1e-5);
    // both gradients accumulate
    VecF dx = randn(N * C, 4), dw = randn(C, 5);
    const VecF dx0 = dx, dw0 = dw;
    cpu::rmsnorm_backward(dx.data(), dw.data(), G.data(), x.data(), w.data(), rstd.data(), N, C);
    VecD wx(dx.size()), ww(C);
    for (size_t i = 0; i < dx.size(); ++i) wx[i] = dx0[i] + g_x[i];
    for (int c = 0; c < C; ++c) ww[c] = dw0[c] + g_w[c];
    CHECK(rel_err(dx, wx) < 1e-5);
    CHECK(rel_err(dw, ww) < 1e-5);

    // nullptr skips either gradient; the other one is unchanged
    VecF dx2 = dx0, dw2 = dw0;
    cpu::rmsnorm_backward(dx2.data(), nullptr, G.data(), x.data(), w.data(), rstd.data(), N, C);
    cpu::rmsnorm_backward(nullptr, dw2.data(), G.data(), x.data(), w.data(), rstd.data(), N, C);
    CHECK(same_bits(dx2, dx));
    CHECK(same_bits(dw2, dw));
  }
}

TEST_CASE("rmsnorm backward: same bits for 1 and 2 threads; ops dispatch", "[kernels][llama]") {
  const int N = 300, C = 96;
  VecF x = randn(N * C, 10), w = randn(C, 11), G = randn(N * C, 12);
  VecF y(N * C), rstd(N);
  cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
  auto run = [&](int threads) {
    VecF dx(N * C, 0.0f), dw(C, 0.0f);
    with_threads(threads, [&] {
      cpu::rmsnorm_backward(dx.data(), dw.data(), G.data(), x.data(), w.data(), rstd.data(), N, C);
    });
    dx.insert(dx.end(), dw.begin(), dw.end());
    return dx;
  };
  CHECK(same_bits(run(1), run(2)));

  VecF y2(N * C), rstd2(N), dx(N * C, 0.0f), dw(C, 0.0f);
  ops::rmsnorm_forward(Device::CPU, y2.data(), rstd2.data(), x.data(), w.data(), N, C, 1e-5f);
  ops::rmsnorm_backward(Device::CPU, dx.data(), dw.data(), G.data(), x.data(), w.data(), rstd2.data(), N, C);
  CHECK(same_bits(y2, y));
  CHECK(same_bits(rstd2, rstd));
  dx.insert(dx.end(), dw.begin(), dw.end());
  CHECK(same_bits(dx, run(1)));
}

// ===================================================================== LayerNorm eps

TEST_CASE("layernorm with a non-default eps: reference and finite differences", "[kernels][llama]") {
  const int N = 5, C = 29;
  VecF x = randn(N * C, 20, 0.5f), w = randn(C, 21), b = randn(C, 22), G = randn(N * C, 23);
  const float eps = 0.2f;  // comparable to the variance (0.25), so a wrong eps shows
  VecF y(N * C), mean(N), rstd(N);
  cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, eps);
  const VecD xd = to_d(x), wd = to_d(w), bd = to_d(b), Gd = to_d(G);
  CHECK(rel_err(y, ref_layernorm(xd, wd, bd, N, C, eps)) < 2e-6);
  CHECK(rel_err(y, ref_layernorm(xd, wd, bd, N, C, 1e-5)) > 1e-2);

  const VecD g_x = fd_grad(xd, [&](const VecD& v) { return dot(ref_layernorm(v, wd, bd, N, C, eps), Gd); }, 1e-5);
  const VecD g_w = fd_grad(wd, [&](const VecD& v) { return dot(ref_layernorm(xd, v, bd, N, C, eps), Gd); }, 1e-5);
  VecF dx(N * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
  cpu::layernorm_backward(dx.data(), dw.data(), db.data(), G.data(), x.data(), w.data(), mean.data(),
                          rstd.data(), N, C);
  CHECK(rel_err(dx, g_x) < 1e-5);
  CHECK(rel_err(dw, g_w) < 1e-5);

  // ops' default eps is 1e-5, bit for bit the explicit one
  VecF y1(N * C), y2(N * C), m1(N), m2(N), r1(N), r2(N);
  ops::layernorm_forward(Device::CPU, y1.data(), m1.data(), r1.data(), x.data(), w.data(), b.data(), N, C);
  cpu::layernorm_forward(y2.data(), m2.data(), r2.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
  CHECK(same_bits(y1, y2));
  CHECK(same_bits(r1, r2));
}

// ===================================================================== RoPE

TEST_CASE("rope forward: Hugging Face's rotate-half reference, grouped qkv", "[kernels][llama]") {
  for (const RopeShape s : {RopeShape{2, 5, 4, 4, 16, 16},   // MHA: [NH][q, k, v][HD]
                            RopeShape{2, 3, 6, 2, 12, 8},    // GQA, partial rotation
                            RopeShape{1, 4, 3, 1, 10, 6},    // MQA, odd half (3)
                            RopeShape{1, 3, 8, 4, 64, 64},   // Llama-like head, 2 q per group
                            RopeShape{1, 2, 2, 2, 8, 0}}) {  // no rotation at all
    INFO("B=" << s.B << " T=" << s.T << " NH=" << s.NH << " NKV=" << s.NKV << " HD=" << s.HD
              << " rot=" << s.rot);
    VecF cos, sin;
    rope_tables(s.T, s.rot, cos, sin);
    const VecF x0 = randn(rope_size(s), 30);
    VecF x = x0;
    cpu::rope_forward(x.data(), cos.data(), sin.data(), s.B, s.T, s.NH, s.NKV, s.HD, s.rot);
    const VecD want = ref_rope(to_d(x0), cos, sin, s, false);
    CHECK(rel_err(x, want) < 1e-6);
    // what the reference leaves alone (v heads, channels >= rot) is untouched bit for bit
    size_t untouched = 0, kept = 0;
    for (size_t i = 0; i < x.size(); ++i)
      if (want[i] == static_cast<double>(x0[i])) {
        ++untouched;
        kept += std::memcmp(&x[i], &x0[i], sizeof(float)) == 0;
      }
    CHECK(kept == untouched);
    CHECK(untouched >= static_cast<size_t>(s.B) * s.T * s.NKV * s.HD);  // at least the v heads

    // ops dispatch: the same bits
    VecF x2 = x0;
    ops::rope_forward(Device::CPU, x2.data(), cos.data(), sin.data(), s.B, s.T, s.NH, s.NKV, s.HD, s.rot);
    CHECK(same_bits(x2, x));
  }
}

TEST_CASE("rope backward: the transpose (adjoint identity, finite differences, inverse)", "[kernels][llama]") {
  for (const RopeShape s : {RopeShape{2, 4, 4, 2, 12, 8}, RopeShape{1, 5, 3, 3, 14, 14},
                            RopeShape{2, 3, 6, 1, 10, 4}}) {
    INFO("B=" << s.B << " T=" << s.T << " NH=" << s.NH << " NKV=" << s.NKV << " HD=" << s.HD
              << " rot=" << s.rot);
    VecF cos, sin;
    rope_tables(s.T, s.rot, cos, sin, 1000);
    const size_t n = rope_size(s);
    const VecF x = randn(n, 40), y = randn(n, 41);
    VecF Rx = x, RTy = y;
    cpu::rope_forward(Rx.data(), cos.data(), sin.data(), s.B, s.T, s.NH, s.NKV, s.HD, s.rot);
    cpu::rope_backward(RTy.data(), cos.data(), sin.data(), s.B, s.T, s.NH, s.NKV, s.HD, s.rot);
    // <R x, y> == <x, R^T y>
    const double lhs = dot(Rx, y), rhs = dot(x, RTy);
    CHECK(std::abs(lhs - rhs) < 1e-6 * std::sqrt(dot(x, x) * dot(y, y)));

    // R^T G is the gradient of <R x, G> (finite differences of the double reference)
    const VecD Gd = to_d(y);
    const VecD g = fd_grad(to_d(x), [&](const VecD& v) { return dot(ref_rope(v, cos, sin, s, false), Gd); }, 1e-3);
    CHECK(rel_err(RTy, g) < 1e-6);
    CHECK(rel_err(RTy, ref_rope(Gd, cos, sin, s, true)) < 1e-6);

    // R^T R = I (to float rounding); v gradients pass through untouched
    VecF back = Rx;
    cpu::rope_backward(back.data(), cos.data(), sin.data(), s.B, s.T, s.NH, s.NKV, s.HD, s.rot);
    CHECK(rel_err(back, x) < 1e-6);
    VecF RTy2 = y;
    ops::rope_backward(Device::CPU, RTy2.data(), cos.data(), sin.data(), s.B, s.T, s.NH, s.NKV, s.HD, s.rot);
    CHECK(same_bits(RTy2, RTy));
  }
}

TEST_CASE("rope: bad shapes are refused", "[kernels][llama]") {
  VecF buf(1024, 0.0f), cs(64, 1.0f);
  CHECK_THROWS_AS(cpu::rope_forward(buf.data(), cs.data(), cs.data(), 1, 2, 3, 2, 8, 8), std::invalid_argument);
  CHECK_THROWS_AS(cpu::rope_forward(buf.data(), cs.data(), cs.data(), 1, 2, 2, 2, 8, 7), std::invalid_argument);
  CHECK_THROWS_AS(cpu::rope_backward(buf.data(), cs.data(), cs.data(), 1, 2, 2, 2, 8, 10), std::invalid_argument);
}

// ===================================================================== SwiGLU

TEST_CASE("swiglu forward/backward: reference and finite differences", "[kernels][llama]") {
  for (const int F : {37, 16, 5}) {  // vector blocks + tail, vectors only, tail only
    INFO("F " << F);
    const int N = 6;
    VecF inp = randn(static_cast<size_t>(N) * 2 * F, 50, 3.0f), G = randn(static_cast<size_t>(N) * F, 51);
    // saturated gates in row 0 (both signs, past the exp clamp), normal up projections
    const float extreme[] = {-100.0f, -89.0f, -88.0f, -40.0f, 0.0f, 40.0f, 88.0f, 100.0f};
    for (int f = 0; f < std::min(F, 8); ++f) inp[f] = extreme[f];
    const VecD ind = to_d(inp), Gd = to_d(G);

    VecF out(static_cast<size_t>(N) * F, NAN);
    cpu::swiglu_forward(out.data(), inp.data(), N, F);
    CHECK(rel_err(out, ref_swiglu(ind, N, F)) < 1e-6);

    const VecD g = fd_grad(ind, [&](const VecD& v) { return dot(ref_swiglu(v, N, F), Gd); }, 1e-5);
    VecF dinp(inp.size(), NAN);  // overwritten
    cpu::swiglu_backward(dinp.data(), inp.data(), G.data(), N, F);
    CHECK(rel_err(dinp, g) < 1e-5);
    // the analytic derivative, exactly: dgate = dout up silu'(gate), dup = dout silu(gate)
    VecD want(inp.size());
    for (int n = 0; n < N; ++n)
      for (int f = 0; f < F; ++f) {
        const double gt = ind[n * 2 * F + f], up = ind[n * 2 * F + F + f], dy = Gd[n * F + f];
        const double s = 1.0 / (1.0 + std::exp(-gt));
        want[n * 2 * F + f] = dy * up * s * (1.0 + gt * (1.0 - s));
        want[n * 2 * F + F + f] = dy * silu(gt);
      }
    CHECK(rel_err(dinp, want) < 1e-6);

    VecF out2(out.size()), dinp2(dinp.size());
    ops::swiglu_forward(Device::CPU, out2.data(), inp.data(), N, F);
    ops::swiglu_backward(Device::CPU, dinp2.data(), inp.data(), G.data(), N, F);
    CHECK(same_bits(out2, out));
    CHECK(same_bits(dinp2, dinp));
  }
}

TEST_CASE("swiglu: silu within 1e-6 relative of std::exp's, elementwise", "[kernels][llama]") {
  // gate on a grid over [-80, 80] (exp's accurate range), up = 1: out = silu(gate)
  const int F = 3201;
  VecF inp(2 * F, 1.0f);
  for (int f = 0; f < F; ++f) inp[f] = -80.0f + 0.05f * f;
  VecF out(F), dinp(2 * F), ones(F, 1.0f);
  cpu::swiglu_forward(out.data(), inp.data(), 1, F);
  cpu::swiglu_backward(dinp.data(), inp.data(), ones.data(), 1, F);
  double worst = 0.0, worst_d = 0.0;
  for (int f = 0; f < F; ++f) {
    const double g = inp[f], want = silu(g);
    if (want != 0.0) worst = std::max(worst, std::abs(out[f] - want) / std::abs(want));
    worst_d = std::max(worst_d, std::abs(dinp[F + f] - want) / std::max(std::abs(want), 1e-300));
  }
  CHECK(worst < 1e-6);
  CHECK(worst_d < 1e-6);
}

// ===================================================================== fill_cols

TEST_CASE("fill_cols sets a column range of a strided matrix and nothing else", "[kernels][llama]") {
  const int N = 9, ld = 13, c0 = 7, c1 = 11;
  const VecF x0 = randn(static_cast<size_t>(N) * ld, 60);
  VecF x = x0;
  cpu::fill_cols(x.data(), N, ld, c0, c1, -INFINITY);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < ld; ++c) {
      const size_t i = static_cast<size_t>(n) * ld + c;
      if (c >= c0 && c < c1) CHECK(x[i] == -INFINITY);
      else CHECK(std::memcmp(&x[i], &x0[i], sizeof(float)) == 0);
    }
  VecF y = x0;
  cpu::fill_cols(y.data(), N, ld, c1, c1, 0.0f);  // empty range
  CHECK(same_bits(y, x0));
  ops::fill_cols(Device::CPU, y.data(), N, ld, c0, c1, -INFINITY);
  CHECK(same_bits(y, x));
}
