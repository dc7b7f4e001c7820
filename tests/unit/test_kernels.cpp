// Unit tests of the CPU kernels (kernels/cpu/ops.h) against double-precision references and
// central finite differences of those references. Small odd sizes on purpose (tile and vector
// remainders). Every check is an inf-norm relative error, max|got - want| / max|want|, unless
// stated otherwise.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/philox.h"
#include "common/kernel_checks.h"

namespace cpu = lossytp::cpu;
using namespace lossytp::testing;

namespace {

template <class T>
std::vector<T> pick(const std::vector<T>& x, const std::vector<size_t>& idx) {
  std::vector<T> out;
  for (size_t i : idx) out.push_back(x[i]);
  return out;
}

// ---------------------------------------------------------------- references (double)

// out[N,OC] = inp @ W^T + b
VecD ref_matmul(const VecD& inp, const VecD& w, const VecD* b, int N, int C, int OC) {
  VecD out(static_cast<size_t>(N) * OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (int c = 0; c < C; ++c) s += inp[n * C + c] * w[o * C + c];
      out[n * OC + o] = s;
    }
  return out;
}

VecD ref_layernorm(const VecD& x, const VecD& w, const VecD& b, int N, int C) {
  VecD y(x.size());
  for (int n = 0; n < N; ++n) {
    double m = 0.0, v = 0.0;
    for (int c = 0; c < C; ++c) m += x[n * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += (x[n * C + c] - m) * (x[n * C + c] - m);
    v /= C;
    const double r = 1.0 / std::sqrt(v + 1e-5);
    for (int c = 0; c < C; ++c) y[n * C + c] = (x[n * C + c] - m) * r * w[c] + b[c];
  }
  return y;
}

double ref_gelu(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

// Naive causal attention with the full softmax. qkv [B,T,NH,3,HD] -> out [B,T,NH,HD], lse.
VecD ref_attention(const VecD& qkv, int B, int T, int NH, int HD, VecD* lse = nullptr) {
  VecD out(static_cast<size_t>(B) * T * NH * HD, 0.0);
  if (lse) lse->assign(static_cast<size_t>(B) * NH * T, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(HD));
  auto at = [&](int b, int t, int h, int w) { return &qkv[(((b * T + t) * NH + h) * 3 + w) * HD]; };
  VecD s(T);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T; ++t) {
        const double* q = at(b, t, h, 0);
        double mx = -1e300;
        for (int u = 0; u <= t; ++u) {
          const double* k = at(b, u, h, 1);
          double d = 0.0;
          for (int i = 0; i < HD; ++i) d += q[i] * k[i];
          s[u] = d * scale;
          mx = std::max(mx, s[u]);
        }
        double sum = 0.0;
        for (int u = 0; u <= t; ++u) sum += std::exp(s[u] - mx);
        double* o = &out[((b * T + t) * NH + h) * HD];
        for (int u = 0; u <= t; ++u) {
          const double p = std::exp(s[u] - mx) / sum;
          const double* v = at(b, u, h, 2);
          for (int i = 0; i < HD; ++i) o[i] += p * v[i];
        }
        if (lse) (*lse)[(b * NH + h) * T + t] = mx + std::log(sum);
      }
  return out;
}

// Per-row cross-entropy of logits [N,V] (whole vocab) against tgt.
VecD ref_ce_losses(const VecD& logits, const std::vector<int32_t>& tgt, int N, int V) {
  VecD loss(N);
  for (int n = 0; n < N; ++n) {
    double mx = -1e300;
    for (int v = 0; v < V; ++v) mx = std::max(mx, logits[n * V + v]);
    double s = 0.0;
    for (int v = 0; v < V; ++v) s += std::exp(logits[n * V + v] - mx);
    loss[n] = std::log(s) + mx - (tgt[n] >= 0 ? logits[n * V + tgt[n]] : 0.0);
  }
  return loss;
}

void naive_sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const VecF& A, int lda,
                 const VecF& B, int ldb, float beta, VecD& C, int ldc) {
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0.0;
      for (int k = 0; k < K; ++k) {
        const double a = ta ? A[k * lda + i] : A[i * lda + k];
        const double b = tb ? B[j * ldb + k] : B[k * ldb + j];
        s += a * b;
      }
      C[i * ldc + j] = alpha * s + beta * C[i * ldc + j];
    }
}

}  // namespace

// ===================================================================== GEMM

TEST_CASE("sgemm: all four transpose combinations against a naive loop", "[kernels]") {
  INFO("backend " << cpu::gemm_backend_name());
  const int M = 37, N = 29, K = 23;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      // stored shapes: A is [M,K] or [K,M]; B is [K,N] or [N,K]; padded row strides
      const int arows = ta ? K : M, acols = ta ? M : K;
      const int brows = tb ? N : K, bcols = tb ? K : N;
      const int lda = acols + 3, ldb = bcols + 5, ldc = N + 2;
      VecF A = randn(static_cast<size_t>(arows) * lda, 1);
      VecF B = randn(static_cast<size_t>(brows) * ldb, 2);
      VecF C = randn(static_cast<size_t>(M) * ldc, 3);
      VecD want = to_d(C);
      const float alpha = 0.75f, beta = -0.5f;
      naive_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, want, ldc);
      cpu::sgemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
      INFO("trans_a=" << ta << " trans_b=" << tb);
      CHECK(rel_err(C, want) < 1e-5);
      // the padding columns of C must be untouched
      VecF C0 = randn(static_cast<size_t>(M) * ldc, 3);
      for (int i = 0; i < M; ++i)
        for (int j = N; j < ldc; ++j) CHECK(C[i * ldc + j] == C0[i * ldc + j]);
    }
}

TEST_CASE("sgemm: beta = 0 ignores C (even NaN), K = 0 scales C", "[kernels]") {
  const int M = 5, N = 7, K = 3;
  VecF A = randn(M * K, 4), B = randn(K * N, 5);
  VecF C(M * N, std::nanf(""));
  VecD want(M * N, 0.0);
  naive_sgemm(false, false, M, N, K, 1.0f, A, K, B, N, 0.0f, want, N);
  cpu::sgemm(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
  CHECK(rel_err(C, want) < 1e-6);
  VecF C2(M * N, 2.0f);
  cpu::sgemm(false, false, M, N, 0, 1.0f, A.data(), 1, B.data(), N, 0.5f, C2.data(), N);
  for (float c : C2) CHECK(c == 1.0f);
}

// ===================================================================== matmul

TEST_CASE("matmul forward/backward: reference and finite differences", "[kernels]") {
  const int N = 9, C = 13, OC = 11;
  VecF inp = randn(N * C, 10), w = randn(OC * C, 11), b = randn(OC, 12);
  VecF out(N * OC);
  cpu::matmul_forward(out.data(), inp.data(), w.data(), b.data(), N, C, OC);
  VecD db_ = to_d(b);
  CHECK(rel_err(out, ref_matmul(to_d(inp), to_d(w), &db_, N, C, OC)) < 1e-6);
  cpu::matmul_forward(out.data(), inp.data(), w.data(), nullptr, N, C, OC);
  CHECK(rel_err(out, ref_matmul(to_d(inp), to_d(w), nullptr, N, C, OC)) < 1e-6);

  // L = sum(out * G): dout = G
  VecF G = randn(N * OC, 13);
  const VecD Gd = to_d(G);
  const VecD xi = to_d(inp), xw = to_d(w), xb = to_d(b);
  VecD g_inp = fd_grad(xi, [&](const VecD& x) { return dot(ref_matmul(x, xw, &xb, N, C, OC), Gd); }, 1e-3);
  VecD g_w = fd_grad(xw, [&](const VecD& x) { return dot(ref_matmul(xi, x, &xb, N, C, OC), Gd); }, 1e-3);
  VecD g_b = fd_grad(xb, [&](const VecD& x) { return dot(ref_matmul(xi, xw, &x, N, C, OC), Gd); }, 1e-3);

  // dinp overwrites (start from garbage); dweight/dbias accumulate onto existing values
  VecF dinp(N * C, 123.0f), dw = randn(OC * C, 14), dbias = randn(OC, 15);
  const VecF dw0 = dw, db0 = dbias;
  cpu::matmul_backward(dinp.data(), dw.data(), dbias.data(), G.data(), inp.data(), w.data(), N, C, OC);
  CHECK(rel_err(dinp, g_inp) < 1e-5);
  VecD want_w(dw.size()), want_b(dbias.size());
  for (size_t i = 0; i < dw.size(); ++i) want_w[i] = dw0[i] + g_w[i];
  for (size_t i = 0; i < dbias.size(); ++i) want_b[i] = db0[i] + g_b[i];
  CHECK(rel_err(dw, want_w) < 1e-5);
  CHECK(rel_err(dbias, want_b) < 1e-5);

  // nullptr skips
  VecF dw2 = dw0;
  cpu::matmul_backward(nullptr, dw2.data(), nullptr, G.data(), inp.data(), w.data(), N, C, OC);
  CHECK(rel_err(dw2, want_w) < 1e-5);
}

TEST_CASE("matmul: larger shapes and dbias over many rows", "[kernels]") {
  const int N = 300, C = 48, OC = 520;  // OC > the dbias column block
  VecF inp = randn(N * C, 20), w = randn(OC * C, 21), b = randn(OC, 22);
  VecF out(static_cast<size_t>(N) * OC);
  cpu::matmul_forward(out.data(), inp.data(), w.data(), b.data(), N, C, OC);
  VecD bd = to_d(b);
  CHECK(rel_err(out, ref_matmul(to_d(inp), to_d(w), &bd, N, C, OC)) < 1e-5);
  VecF G = randn(static_cast<size_t>(N) * OC, 23);
  VecF dbias(OC, 1.0f);
  cpu::matmul_backward(nullptr, nullptr, dbias.data(), G.data(), inp.data(), w.data(), N, C, OC);
  VecD want(OC, 1.0);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) want[o] += G[static_cast<size_t>(n) * OC + o];
  CHECK(rel_err(dbias, want) < 1e-5);
}

// ===================================================================== layernorm

TEST_CASE("layernorm forward/backward: reference and finite differences", "[kernels]") {
  const int N = 6, C = 37;
  VecF x = randn(N * C, 30, 2.0f), w = randn(C, 31), b = randn(C, 32);
  for (int c = 0; c < C; ++c) x[c] += 5.0f;  // an offset row: mean far from zero
  VecF y(N * C), mean(N), rstd(N);
  cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
  const VecD xd = to_d(x), wd = to_d(w), bd = to_d(b);
  CHECK(rel_err(y, ref_layernorm(xd, wd, bd, N, C)) < 1e-5);
  for (int n = 0; n < N; ++n) {
    double m = 0.0;
    for (int c = 0; c < C; ++c) m += xd[n * C + c];
    CHECK(std::abs(mean[n] - m / C) < 1e-5 * (1.0 + std::abs(m / C)));
  }

  VecF G = randn(N * C, 33);
  const VecD Gd = to_d(G);
  VecD g_x = fd_grad(xd, [&](const VecD& v) { return dot(ref_layernorm(v, wd, bd, N, C), Gd); }, 1e-5);
  VecD g_w = fd_grad(wd, [&](const VecD& v) { return dot(ref_layernorm(xd, v, bd, N, C), Gd); }, 1e-5);
  VecD g_b = fd_grad(bd, [&](const VecD& v) { return dot(ref_layernorm(xd, wd, v, N, C), Gd); }, 1e-5);

  // all three gradients accumulate
  VecF dx = randn(N * C, 34), dw = randn(C, 35), db = randn(C, 36);
  const VecF dx0 = dx, dw0 = dw, db0 = db;
  cpu::layernorm_backward(dx.data(), dw.data(), db.data(), G.data(), x.data(), w.data(),
                          mean.data(), rstd.data(), N, C);
  VecD wx(dx.size()), ww(C), wb(C);
  for (size_t i = 0; i < dx.size(); ++i) wx[i] = dx0[i] + g_x[i];
  for (int c = 0; c < C; ++c) ww[c] = dw0[c] + g_w[c], wb[c] = db0[c] + g_b[c];
  CHECK(rel_err(dx, wx) < 1e-4);
  CHECK(rel_err(dw, ww) < 1e-4);
  CHECK(rel_err(db, wb) < 1e-5);
}

TEST_CASE("layernorm backward: same bits for 1 and 2 threads", "[kernels]") {
  const int N = 300, C = 96;
  VecF x = randn(N * C, 40), w = randn(C, 41), b = randn(C, 42), G = randn(N * C, 43);
  VecF y(N * C), mean(N), rstd(N);
  cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-5f);
  auto run = [&](int threads) {
    VecF dx(N * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
    with_threads(threads, [&] {
      cpu::layernorm_backward(dx.data(), dw.data(), db.data(), G.data(), x.data(), w.data(),
                              mean.data(), rstd.data(), N, C);
    });
    dx.insert(dx.end(), dw.begin(), dw.end());
    dx.insert(dx.end(), db.begin(), db.end());
    return dx;
  };
  CHECK(run(1) == run(2));
}

// ===================================================================== GELU

TEST_CASE("gelu forward/backward: reference and finite differences", "[kernels]") {
  VecF x;
  for (int i = -1200; i <= 1200; ++i) x.push_back(i * 0.005f);  // [-6, 6]
  for (float v : {-30.0f, -12.0f, -9.0f, 1e-6f, -1e-6f, 0.0f, 9.0f, 12.0f, 30.0f}) x.push_back(v);
  VecF r = randn(2000, 50, 3.0f);
  x.insert(x.end(), r.begin(), r.end());
  const size_t n = x.size();

  VecF y(n);
  cpu::gelu_forward(y.data(), x.data(), n);
  for (size_t i = 0; i < n; ++i) {
    REQUIRE(std::isfinite(y[i]));
    const double want = ref_gelu(x[i]);
    INFO("x = " << x[i]);
    CHECK(std::abs(y[i] - want) <= 1e-6 * std::abs(want) + 1e-7 * std::abs(x[i]) + 1e-30);
  }

  VecF dout = randn(n, 51), dinp(n, 0.0f);
  cpu::gelu_backward(dinp.data(), x.data(), dout.data(), n);
  double maxerr = 0.0;
  for (size_t i = 0; i < n; ++i) {
    REQUIRE(std::isfinite(dinp[i]));
    const double h = 1e-4 * std::max(1.0, std::abs(static_cast<double>(x[i])));
    const double d = (ref_gelu(x[i] + h) - ref_gelu(x[i] - h)) / (2 * h);
    maxerr = std::max(maxerr, std::abs(dinp[i] - d * dout[i]) / (std::abs(dout[i]) + 1e-30));
  }
  CHECK(maxerr < 1e-6);

  // dinp may alias dout
  VecF alias = dout;
  cpu::gelu_backward(alias.data(), x.data(), alias.data(), n);
  CHECK(alias == dinp);
}

// ===================================================================== attention

namespace {
struct AttnCase {
  int B, T, NH, HD;
};

VecF run_attention_fwd(const VecF& qkv, const AttnCase& a, VecF* lse = nullptr) {
  VecF out(static_cast<size_t>(a.B) * a.T * a.NH * a.HD);
  VecF l(static_cast<size_t>(a.B) * a.NH * a.T);
  cpu::attention_forward(out.data(), l.data(), qkv.data(), a.B, a.T, a.NH, a.NH, a.HD);
  if (lse) *lse = l;
  return out;
}
}  // namespace

TEST_CASE("attention forward against naive full-softmax attention", "[kernels]") {
  // T not a multiple of the tile (64), HD not a multiple of the vector width (16), and the
  // gpt-tiny head shape.
  for (AttnCase a : {AttnCase{2, 70, 3, 20}, AttnCase{1, 1, 1, 8}, AttnCase{1, 130, 2, 64},
                     AttnCase{2, 256, 2, 64}, AttnCase{1, 97, 1, 100}}) {
    INFO("B=" << a.B << " T=" << a.T << " NH=" << a.NH << " HD=" << a.HD);
    VecF qkv = randn(static_cast<size_t>(a.B) * a.T * a.NH * 3 * a.HD, 60, 1.5f);
    VecF lse;
    VecF out = run_attention_fwd(qkv, a, &lse);
    VecD want_lse;
    VecD want = ref_attention(to_d(qkv), a.B, a.T, a.NH, a.HD, &want_lse);
    CHECK(rel_err(out, want) < 5e-6);
    CHECK(rel_err(lse, want_lse) < 2e-6);
  }
}

TEST_CASE("attention forward is causal: out[t] does not depend on tokens > t", "[kernels]") {
  const AttnCase a{2, 150, 2, 24};
  VecF qkv = randn(static_cast<size_t>(a.B) * a.T * a.NH * 3 * a.HD, 61);
  const VecF base = run_attention_fwd(qkv, a);
  const size_t tok = static_cast<size_t>(a.NH) * a.HD;  // out floats per token
  for (int t0 : {0, 5, 63, 64, 100, 149}) {
    VecF q2 = qkv;
    for (int b = 0; b < a.B; ++b)  // change q, k and v of token t0, all heads
      for (int i = 0; i < a.NH * 3 * a.HD; ++i)
        q2[(static_cast<size_t>(b) * a.T + t0) * a.NH * 3 * a.HD + i] += 3.0f;
    const VecF out = run_attention_fwd(q2, a);
    INFO("t0 = " << t0);
    for (int b = 0; b < a.B; ++b) {
      bool before_same = true;
      for (size_t i = 0; i < static_cast<size_t>(t0) * tok; ++i) {
        const size_t j = static_cast<size_t>(b) * a.T * tok + i;
        before_same = before_same && out[j] == base[j];
      }
      CHECK(before_same);
      bool at_changed = false;
      for (size_t i = 0; i < tok; ++i) {
        const size_t j = (static_cast<size_t>(b) * a.T + t0) * tok + i;
        at_changed = at_changed || out[j] != base[j];
      }
      CHECK(at_changed);
    }
  }
}

TEST_CASE("attention backward against finite differences of the reference", "[kernels]") {
  for (AttnCase a : {AttnCase{2, 70, 2, 20}, AttnCase{1, 130, 1, 32}}) {
    INFO("B=" << a.B << " T=" << a.T << " NH=" << a.NH << " HD=" << a.HD);
    const size_t nqkv = static_cast<size_t>(a.B) * a.T * a.NH * 3 * a.HD;
    VecF qkv = randn(nqkv, 70);
    VecF lse;
    VecF out = run_attention_fwd(qkv, a, &lse);
    VecF dout = randn(out.size(), 71);
    VecF dqkv(nqkv, 77.0f);  // overwritten
    cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), a.B,
                            a.T, a.NH, a.NH, a.HD);
    // sampled indices: every 7th element plus the first/last tokens in full
    std::vector<size_t> idx;
    for (size_t i = 0; i < nqkv; i += 7) idx.push_back(i);
    const size_t per_tok = static_cast<size_t>(a.NH) * 3 * a.HD;
    for (size_t i = 0; i < per_tok; ++i) idx.push_back(i), idx.push_back(nqkv - 1 - i);
    const VecD Gd = to_d(dout);
    VecD g = fd_grad(to_d(qkv),
                     [&](const VecD& x) { return dot(ref_attention(x, a.B, a.T, a.NH, a.HD), Gd); },
                     1e-5, idx);
    CHECK(rel_err(pick(dqkv, idx), pick(g, idx)) < 2e-5);
  }
}

TEST_CASE("attention: a shorter T after a longer one (same padded size) is still right", "[kernels]") {
  // The kernels keep zero-padded scratch buffers between calls; rows T..Tp of the padding must
  // not keep values from the previous, longer sequence (they would leak into dK and dV).
  auto run = [](const AttnCase& a, uint64_t stream, VecF* dqkv_out, VecF* dout_out) {
    VecF qkv = randn(static_cast<size_t>(a.B) * a.T * a.NH * 3 * a.HD, stream);
    VecF lse;
    VecF out = run_attention_fwd(qkv, a, &lse);
    VecF dout = randn(out.size(), stream + 1);
    VecF dqkv(qkv.size());
    cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), a.B,
                            a.T, a.NH, a.NH, a.HD);
    if (dqkv_out) *dqkv_out = dqkv;
    if (dout_out) *dout_out = dout;
    return qkv;
  };
  run(AttnCase{1, 120, 1, 20}, 140, nullptr, nullptr);  // Tp = 128, Dp = 32
  const AttnCase a{1, 70, 1, 20};                       // same Tp and Dp
  VecF dqkv, dout;
  const VecF qkv = run(a, 142, &dqkv, &dout);
  std::vector<size_t> idx;
  for (size_t i = 0; i < qkv.size(); i += 5) idx.push_back(i);
  const VecD Gd = to_d(dout);
  VecD g = fd_grad(to_d(qkv),
                   [&](const VecD& x) { return dot(ref_attention(x, a.B, a.T, a.NH, a.HD), Gd); },
                   1e-5, idx);
  CHECK(rel_err(pick(dqkv, idx), pick(g, idx)) < 2e-5);
}

TEST_CASE("attention backward: gradients are causal, overwrite, and thread-independent", "[kernels]") {
  const AttnCase a{2, 140, 3, 16};
  const size_t nqkv = static_cast<size_t>(a.B) * a.T * a.NH * 3 * a.HD;
  VecF qkv = randn(nqkv, 80);
  VecF lse;
  VecF out = run_attention_fwd(qkv, a, &lse);
  // dout nonzero only for tokens <= t1: tokens > t1 must get exactly zero gradient
  const int t1 = 90;
  VecF dout = randn(out.size(), 81);
  const size_t tok = static_cast<size_t>(a.NH) * a.HD;
  for (int b = 0; b < a.B; ++b)
    for (int t = t1 + 1; t < a.T; ++t)
      for (size_t i = 0; i < tok; ++i) dout[(static_cast<size_t>(b) * a.T + t) * tok + i] = 0.0f;
  auto run = [&](int threads) {
    VecF dqkv(nqkv, std::nanf(""));
    with_threads(threads, [&] {
      cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), a.B,
                              a.T, a.NH, a.NH, a.HD);
    });
    return dqkv;
  };
  const VecF g1 = run(1);
  const size_t per_tok = static_cast<size_t>(a.NH) * 3 * a.HD;
  bool zero_after = true, nonzero_before = false;
  for (int b = 0; b < a.B; ++b)
    for (int t = 0; t < a.T; ++t)
      for (size_t i = 0; i < per_tok; ++i) {
        const float v = g1[(static_cast<size_t>(b) * a.T + t) * per_tok + i];
        if (t > t1) zero_after = zero_after && v == 0.0f;
        else nonzero_before = nonzero_before || v != 0.0f;
      }
  CHECK(zero_after);
  CHECK(nonzero_before);
  CHECK(g1 == run(2));
}

// ===================================================================== embeddings

TEST_CASE("embedding forward/backward with a vocab shard", "[kernels]") {
  const int N = 40, C = 70, Vtot = 20, vocab_start = 8, V = 7;  // this rank owns [8, 15)
  std::vector<int32_t> tok(N);
  for (int n = 0; n < N; ++n) tok[n] = (n * 7 + n / 3) % Vtot;
  tok[3] = -1;  // ignored / padding token: never owned
  VecF table = randn(static_cast<size_t>(V) * C, 90);
  VecF out(static_cast<size_t>(N) * C, 5.0f);
  cpu::embedding_forward(out.data(), tok.data(), table.data(), N, C, vocab_start, V);
  for (int n = 0; n < N; ++n) {
    const int row = tok[n] - vocab_start;
    const bool owned = tok[n] >= 0 && row >= 0 && row < V;
    for (int c = 0; c < C; ++c) CHECK(out[n * C + c] == (owned ? table[row * C + c] : 0.0f));
  }
  // backward: L = sum(out * G); finite differences of the double reference forward
  VecF G = randn(static_cast<size_t>(N) * C, 91);
  const VecD Gd = to_d(G);
  auto fwd = [&](const VecD& tab) {
    VecD o(static_cast<size_t>(N) * C, 0.0);
    for (int n = 0; n < N; ++n) {
      const int row = tok[n] - vocab_start;
      if (tok[n] >= 0 && row >= 0 && row < V)
        for (int c = 0; c < C; ++c) o[n * C + c] = tab[row * C + c];
    }
    return dot(o, Gd);
  };
  VecD g = fd_grad(to_d(table), fwd, 0.5);
  auto run = [&](int threads) {
    VecF dt = randn(table.size(), 92);
    with_threads(threads, [&] {
      cpu::embedding_backward(dt.data(), tok.data(), G.data(), N, C, vocab_start, V);
    });
    return dt;
  };
  const VecF dt = run(1), dt0 = randn(table.size(), 92);
  VecD want(table.size());
  for (size_t i = 0; i < want.size(); ++i) want[i] = dt0[i] + g[i];
  CHECK(rel_err(dt, want) < 1e-6);
  CHECK(dt == run(2));
}

TEST_CASE("position forward/backward", "[kernels]") {
  const int B = 3, T = 11, C = 21;
  VecF x = randn(static_cast<size_t>(B) * T * C, 100), pos = randn(static_cast<size_t>(T) * C, 101);
  VecF y = x;
  cpu::position_forward(y.data(), pos.data(), B, T, C);
  VecD want(y.size());
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < C; ++c) want[(b * T + t) * C + c] = static_cast<double>(x[(b * T + t) * C + c]) + pos[t * C + c];
  CHECK(rel_err(y, want) < 1e-6);
  // L = sum((x + pos) * G) -> dpos = sum_b G, via finite differences of the double forward
  VecF G = randn(y.size(), 102);
  const VecD Gd = to_d(G), xd = to_d(x);
  auto fwd = [&](const VecD& p) {
    double s = 0.0;
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int c = 0; c < C; ++c) s += (xd[(b * T + t) * C + c] + p[t * C + c]) * Gd[(b * T + t) * C + c];
    return s;
  };
  VecD g = fd_grad(to_d(pos), fwd, 0.5);
  VecF dpos(pos.size(), 1.0f);
  cpu::position_backward(dpos.data(), G.data(), B, T, C);
  for (double& v : g) v += 1.0;
  CHECK(rel_err(dpos, g) < 1e-6);
}

// ===================================================================== cross-entropy

namespace {
struct CeResult {
  VecF losses, grad;  // grad [N, Vtot] with the shards' columns side by side
};

// The cross-entropy chain over vocab shards [bounds[s], bounds[s+1]), combining the per-shard
// partial results as the all-reduces would (max, sum, sum).
CeResult run_ce(const VecF& logits, const std::vector<int32_t>& tgt, const VecF& dloss, int N,
                int Vtot, const std::vector<int>& bounds) {
  const int S = static_cast<int>(bounds.size()) - 1;
  std::vector<VecF> shard(S);
  for (int s = 0; s < S; ++s) {
    const int V = bounds[s + 1] - bounds[s];
    shard[s].resize(static_cast<size_t>(N) * V);
    for (int n = 0; n < N; ++n)
      for (int v = 0; v < V; ++v) shard[s][n * V + v] = logits[n * Vtot + bounds[s] + v];
  }
  VecF mx(N, -INFINITY), target(N, 0.0f), sum(N, 0.0f), tmp(N);
  for (int s = 0; s < S; ++s) {
    cpu::ce_local_max(tmp.data(), shard[s].data(), N, bounds[s + 1] - bounds[s]);
    for (int n = 0; n < N; ++n) mx[n] = std::max(mx[n], tmp[n]);
  }
  for (int s = 0; s < S; ++s) {
    cpu::ce_local_target(tmp.data(), shard[s].data(), tgt.data(), N, bounds[s + 1] - bounds[s], bounds[s]);
    for (int n = 0; n < N; ++n) target[n] += tmp[n];
  }
  for (int s = 0; s < S; ++s) {
    cpu::ce_local_exp_sum(tmp.data(), shard[s].data(), mx.data(), N, bounds[s + 1] - bounds[s]);
    for (int n = 0; n < N; ++n) sum[n] += tmp[n];
  }
  CeResult r;
  r.losses.resize(N);
  cpu::ce_losses(r.losses.data(), mx.data(), sum.data(), target.data(), tgt.data(), N);
  r.grad.resize(static_cast<size_t>(N) * Vtot);
  for (int s = 0; s < S; ++s) {
    const int V = bounds[s + 1] - bounds[s];
    cpu::ce_backward_inplace(shard[s].data(), sum.data(), tgt.data(), dloss.data(), N, V, bounds[s]);
    for (int n = 0; n < N; ++n)
      for (int v = 0; v < V; ++v) r.grad[n * Vtot + bounds[s] + v] = shard[s][n * V + v];
  }
  return r;
}
}  // namespace

TEST_CASE("cross-entropy chain: losses and gradients, one shard and two", "[kernels]") {
  const int N = 7, Vtot = 50;
  VecF logits = randn(static_cast<size_t>(N) * Vtot, 110, 3.0f);
  for (int v = 0; v < Vtot; ++v) logits[2 * Vtot + v] += 40.0f;  // a row with large logits
  std::vector<int32_t> tgt = {3, 49, 0, -1, 24, 25, 17};           // -1: ignored row
  VecF dloss = randn(N, 111);

  const CeResult one = run_ce(logits, tgt, dloss, N, Vtot, {0, Vtot});
  const VecD ld = to_d(logits);
  const VecD want_loss = ref_ce_losses(ld, tgt, N, Vtot);
  VecF valid_loss, valid_want;
  for (int n = 0; n < N; ++n)
    if (tgt[n] >= 0) valid_loss.push_back(one.losses[n]), valid_want.push_back(static_cast<float>(want_loss[n]));
  CHECK(rel_err(valid_loss, VecD(valid_want.begin(), valid_want.end())) < 1e-6);
  CHECK(one.losses[3] == 0.0f);  // an ignored target contributes no loss

  // L = sum over non-ignored rows of dloss[n] * loss[n]
  auto L = [&](const VecD& x) {
    const VecD l = ref_ce_losses(x, tgt, N, Vtot);
    double s = 0.0;
    for (int n = 0; n < N; ++n)
      if (tgt[n] >= 0) s += dloss[n] * l[n];
    return s;
  };
  const VecD g = fd_grad(ld, L, 1e-5);
  CHECK(rel_err(one.grad, g) < 1e-5);
  for (int v = 0; v < Vtot; ++v) CHECK(one.grad[3 * Vtot + v] == 0.0f);  // ignored row

  // vocab-sharded: the same losses and gradients, up to float summation order
  for (std::vector<int> bounds : {std::vector<int>{0, 23, Vtot}, std::vector<int>{0, 25, Vtot},
                                  std::vector<int>{0, 1, 30, Vtot}}) {
    const CeResult two = run_ce(logits, tgt, dloss, N, Vtot, bounds);
    INFO("shard boundary " << bounds[1]);
    CHECK(rel_err(two.losses, one.losses) < 1e-6);
    CHECK(rel_err(two.grad, one.grad) < 1e-6);
  }
}

TEST_CASE("cross-entropy exp sum: the vectorised exp is within 1e-6 of exp", "[kernels]") {
  // V large enough to use several 256-blocks; logits - max spans [-80, 0].
  const int N = 3, V = 4096 + 37;
  VecF logits(static_cast<size_t>(N) * V);
  for (size_t i = 0; i < logits.size(); ++i)
    logits[i] = -80.0f * static_cast<float>(lossytp::philox_uniform(
                    lossytp::philox4x32_10(static_cast<uint32_t>(i), 0, 0, 0, 1, 2).v[0]));
  VecF mx(N), sum(N);
  cpu::ce_local_max(mx.data(), logits.data(), N, V);
  const VecF orig = logits;
  cpu::ce_local_exp_sum(sum.data(), logits.data(), mx.data(), N, V);
  double worst = 0.0;
  for (int n = 0; n < N; ++n) {
    double s = 0.0;
    for (int v = 0; v < V; ++v) {
      // the argument as the kernel forms it (a float difference); this isolates the exp error
      const float arg = orig[n * V + v] - mx[n];
      const double e = std::exp(static_cast<double>(arg));
      s += e;
      worst = std::max(worst, std::abs(logits[n * V + v] - e) / e);
    }
    CHECK(std::abs(sum[n] - s) / s < 1e-6);
  }
  CHECK(worst < 1e-6);
}

// ===================================================================== AdamW and helpers

TEST_CASE("adamw against a scalar reference over several steps", "[kernels]") {
  const size_t n = 1000;
  VecF p = randn(n, 120), m(n, 0.0f), v(n, 0.0f);
  VecD pd = to_d(p), md(n, 0.0), vd(n, 0.0);
  const float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  for (int64_t t = 1; t <= 5; ++t) {
    VecF g = randn(n, 120 + static_cast<uint64_t>(t), 0.1f);
    g[0] = 0.0f;  // a parameter with zero gradient: only the decay moves it
    cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, t);
    for (size_t i = 0; i < n; ++i) {
      md[i] = b1 * md[i] + (1.0 - b1) * g[i];
      vd[i] = b2 * vd[i] + (1.0 - b2) * static_cast<double>(g[i]) * g[i];
      const double mh = md[i] / (1.0 - std::pow(static_cast<double>(b1), static_cast<double>(t)));
      const double vh = vd[i] / (1.0 - std::pow(static_cast<double>(b2), static_cast<double>(t)));
      pd[i] -= lr * (mh / (std::sqrt(vh) + eps) + wd * pd[i]);
    }
    INFO("step " << t);
    CHECK(rel_err(m, md) < 1e-6);
    CHECK(rel_err(v, vd) < 1e-5);
    CHECK(rel_err(p, pd) < 1e-6);
  }
}

TEST_CASE("sum_squares, scale_inplace, add_inplace", "[kernels]") {
  for (size_t n : {size_t{0}, size_t{1}, size_t{1000}, size_t{300001}}) {
    VecF x = randn(n, 130);
    double want = 0.0;
    for (float v : x) want += static_cast<double>(v) * v;
    CHECK(std::abs(cpu::sum_squares(x.data(), n) - want) <= 1e-12 * want);
    double s1 = 0.0, s2 = 0.0;
    with_threads(1, [&] { s1 = cpu::sum_squares(x.data(), n); });
    with_threads(2, [&] { s2 = cpu::sum_squares(x.data(), n); });
    CHECK(s1 == s2);
    VecF y = randn(n, 131), y0 = y;
    cpu::add_inplace(y.data(), x.data(), n);
    for (size_t i = 0; i < n; ++i) REQUIRE(y[i] == y0[i] + x[i]);
    cpu::scale_inplace(y.data(), -0.5f, n);
    for (size_t i = 0; i < n; ++i) REQUIRE(y[i] == (y0[i] + x[i]) * -0.5f);
  }
}

TEST_CASE("set_num_threads / num_threads / gemm_backend_name", "[kernels]") {
  with_threads(2, [] { CHECK(cpu::num_threads() == 2); });
  const std::string name = cpu::gemm_backend_name();
  CHECK((name == "openblas" || name == "eigen"));
}
