// Semigroup attention, the v1 "ESR" module of oroikono/Megatron-LM-new-attention (acf74e19, the
// version of every logged run; ../shared/semigroup-attention.md section 4). Per (b, h):
//   g~   = (g - mean g) / sqrt(var g + 1e-5)                      (whitening over the head's D)
//   dp   = q_i . k_j * 0.8 / sqrt(D),  s = |g~_i - g~_j|^2
//   logK = ln sum_t w'_t (1 + s / (4 tau_t))^(-beta/2)            (w'_t = w_t + 1e-12)
//   z    = lam dp + (1 - lam) logK,  P = causal row softmax of z
//   u    = P v,  w2 = P u,  y = os ((1 - alpha) u + alpha w2)     (pi cancels: ESR term = P^2 v)
// One pass over the query rows, in blocks of R = 4 rows, with O(R T) row buffers (no T x T
// matrix): P is causal, so when row i is reached every u_j (j < i) is final and w2_i = sum_j P_ij
// u_j is formed from the same row of logits, right after u_i. The backward runs the blocks in
// reverse for the same reason: du = (1-alpha) dy' + P^T dw2 needs the rows k >= i (later blocks
// via an accumulator, the block's own rows explicitly), and recomputes each row's logits once.
// Keys are held transposed per head ([D][T]) so the inner loops run along j and vectorise.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd_exp.h"

namespace lossytp::cpu {

namespace {

using simd::exp_scalar;

// ln(x) for finite normal x > 0, Cephes logf (rel. error ~1e-7), written branch-free so that
// `omp simd` loops vectorise it.
inline float log_scalar(float x) {
  const int32_t bits = std::bit_cast<int32_t>(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  float y = p * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

struct Head {  // one head's kernel constants
  const float* inv4tau;  // [Nt] 1 / (4 tau_t)
  const float* logw;     // [Nt] ln(w_t + 1e-12)
  float hb;              // beta / 2
  int Nt;
};

constexpr int R = 4;  // query rows per block: each key column loaded into L1 serves R rows

// Logits of nr <= R query rows (row r: q qs[r], g~ gs[r]) against keys 0..n-1: dp, s, logK and
// K = exp(logK) = sum_t E_t, row r's at offset r*T; entries with j > the row's own position are
// computed (finite) and masked by the caller. When E is given, also E[(r*Nt + t)*T + j] =
// w'_t (1 + x)^(-hb) and L[...] = ln(1 + x) (the backward's responsibilities). KT, GT: [HD][T].
void block_logits(const float* const* qs, const float* const* gs, int nr, const float* KT, const float* GT, int T,
                  int n, int HD, float cdp, const Head& hp, float* dp, float* s, float* lk, float* E, float* L,
                  float* K) {
  for (int r = 0; r < nr; ++r) {
    std::fill(dp + static_cast<size_t>(r) * T, dp + static_cast<size_t>(r) * T + n, 0.0f);
    std::fill(s + static_cast<size_t>(r) * T, s + static_cast<size_t>(r) * T + n, 0.0f);
  }
  for (int e = 0; e < HD; ++e) {
    const float* kr = KT + static_cast<size_t>(e) * T;
    const float* gr = GT + static_cast<size_t>(e) * T;
    for (int r = 0; r < nr; ++r) {
      const float qe = qs[r][e] * cdp, ge = gs[r][e];
      float* dpr = dp + static_cast<size_t>(r) * T;
      float* sr = s + static_cast<size_t>(r) * T;
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        dpr[j] += qe * kr[j];
        const float d = ge - gr[j];
        sr[j] += d * d;
      }
    }
  }
  const float hb = hp.hb;
  for (int r = 0; r < nr; ++r) {
    const float* sr = s + static_cast<size_t>(r) * T;
    float* Kr = K + static_cast<size_t>(r) * T;
    float* lkr = lk + static_cast<size_t>(r) * T;
    std::fill(Kr, Kr + n, 0.0f);
    for (int t = 0; t < hp.Nt; ++t) {
      const float a = hp.inv4tau[t], lw = hp.logw[t];
      if (!E) {
#pragma omp simd
        for (int j = 0; j < n; ++j) Kr[j] += exp_scalar(lw - hb * log_scalar(1.0f + sr[j] * a));
        continue;
      }
      float* Et = E + (static_cast<size_t>(r) * hp.Nt + t) * T;
      float* Lt = L + (static_cast<size_t>(r) * hp.Nt + t) * T;
#pragma omp simd
      for (int j = 0; j < n; ++j) {
        Lt[j] = log_scalar(1.0f + sr[j] * a);
        Et[j] = exp_scalar(lw - hb * Lt[j]);
        Kr[j] += Et[j];
      }
    }
#pragma omp simd
    for (int j = 0; j < n; ++j) lkr[j] = log_scalar(Kr[j]);
  }
}

void head_consts(std::vector<float>& inv4tau, std::vector<float>& logw, const float* tau,
                 const float* lw, int h, int Nt) {
  for (int t = 0; t < Nt; ++t) {
    inv4tau[t] = 1.0f / (4.0f * tau[h * Nt + t]);
    logw[t] = lw[h * Nt + t];
  }
}

}  // namespace

void semigroup_esr_forward(float* y, float* u, float* w2, float* lse, float* rstd, float* qkvg,
                           const float* tau, const float* logw, const float* hbeta,
                           const float* oscale, float lam, float alpha, int B, int T, int NH,
                           int HD, int Nt) {
  const size_t tok = static_cast<size_t>(4) * NH * HD;  // qkvg floats per token
  const float cdp = 0.8f / std::sqrt(static_cast<float>(HD));
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      auto at = [&](int t) { return qkvg + (static_cast<size_t>(b) * T + t) * tok + static_cast<size_t>(h) * 4 * HD; };
      std::vector<float> KT(static_cast<size_t>(HD) * T), GT(KT.size()), UT(KT.size());
      const size_t RT = static_cast<size_t>(R) * T;
      std::vector<float> dp(RT), s(RT), lk(RT), P(RT), K(RT), inv4tau(Nt), lw(Nt);
      head_consts(inv4tau, lw, tau, logw, h, Nt);
      const Head hp{inv4tau.data(), lw.data(), hbeta[h], Nt};
      for (int t = 0; t < T; ++t) {
        float* g = at(t) + 3 * HD;  // whitened in place (the backward reads g~)
        float mean = 0.0f, var = 0.0f;
        for (int e = 0; e < HD; ++e) mean += g[e];
        mean /= HD;
        for (int e = 0; e < HD; ++e) var += (g[e] - mean) * (g[e] - mean);
        const float r = 1.0f / std::sqrt(var / HD + 1e-5f);
        rstd[(static_cast<size_t>(b) * T + t) * NH + h] = r;
        for (int e = 0; e < HD; ++e) {
          g[e] = (g[e] - mean) * r;
          KT[static_cast<size_t>(e) * T + t] = at(t)[HD + e];
          GT[static_cast<size_t>(e) * T + t] = g[e];
        }
      }
      for (int i0 = 0; i0 < T; i0 += R) {
        const int nr = std::min(R, T - i0), n = i0 + nr;  // rows i0 .. n-1 against keys 0 .. n-1
        const float *qs[R], *gs[R];
        for (int r = 0; r < nr; ++r) qs[r] = at(i0 + r), gs[r] = at(i0 + r) + 3 * HD;
        block_logits(qs, gs, nr, KT.data(), GT.data(), T, n, HD, cdp, hp, dp.data(), s.data(), lk.data(), nullptr,
                     nullptr, K.data());
        for (int r = 0; r < nr; ++r) {
          const int i = i0 + r;
          float* Pr = P.data() + static_cast<size_t>(r) * T;
          const float* dpr = dp.data() + static_cast<size_t>(r) * T;
          const float* lkr = lk.data() + static_cast<size_t>(r) * T;
          float m = -INFINITY;
          for (int j = 0; j <= i; ++j) {
            Pr[j] = lam * dpr[j] + (1.0f - lam) * lkr[j];
            m = std::max(m, Pr[j]);
          }
          float l = 0.0f;
#pragma omp simd reduction(+ : l)
          for (int j = 0; j <= i; ++j) {
            Pr[j] = exp_scalar(Pr[j] - m);
            l += Pr[j];
          }
          const float inv = 1.0f / l;
#pragma omp simd
          for (int j = 0; j <= i; ++j) Pr[j] *= inv;
          for (int j = i + 1; j < n; ++j) Pr[j] = 0.0f;  // causal
          lse[(static_cast<size_t>(b) * NH + h) * T + i] = m + std::log(l);
          float* ui = u + ((static_cast<size_t>(b) * T + i) * NH + h) * HD;
          std::fill(ui, ui + HD, 0.0f);
        }
        for (int j = 0; j < n; ++j) {  // u = P v
          const float* vj = at(j) + 2 * HD;
          for (int r = 0; r < nr; ++r) {
            const float pj = P[static_cast<size_t>(r) * T + j];
            float* ui = u + ((static_cast<size_t>(b) * T + i0 + r) * NH + h) * HD;
#pragma omp simd
            for (int e = 0; e < HD; ++e) ui[e] += pj * vj[e];
          }
        }
        for (int r = 0; r < nr; ++r) {
          const float* ui = u + ((static_cast<size_t>(b) * T + i0 + r) * NH + h) * HD;
          for (int e = 0; e < HD; ++e) UT[static_cast<size_t>(e) * T + i0 + r] = ui[e];
        }
        for (int e = 0; e < HD; ++e) {  // w2 = P u: every u_j with j <= i is final by now
          const float* ur = UT.data() + static_cast<size_t>(e) * T;
          for (int r = 0; r < nr; ++r) {
            const float* Pr = P.data() + static_cast<size_t>(r) * T;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int j = 0; j < n; ++j) acc += Pr[j] * ur[j];
            const size_t row = ((static_cast<size_t>(b) * T + i0 + r) * NH + h) * HD;
            w2[row + e] = acc;
            y[row + e] = oscale[h] * ((1.0f - alpha) * u[row + e] + alpha * acc);
          }
        }
      }
    }
}

void semigroup_esr_backward(float* dqkvg, double* g_lam, double* g_logtau, double* g_logw,
                            double* g_hbeta, double* g_oscale, const float* dy, const float* qkvg,
                            const float* rstd, const float* u, const float* w2, const float* lse,
                            const float* tau, const float* logw, const float* hbeta,
                            const float* oscale, float lam, float alpha, int B, int T, int NH,
                            int HD, int Nt) {
  const size_t tok = static_cast<size_t>(4) * NH * HD;
  const float cdp = 0.8f / std::sqrt(static_cast<float>(HD));
  const size_t heads = static_cast<size_t>(B) * NH;
  // Per (b, h) partial parameter gradients, summed in a fixed order at the end: the same bits
  // for any thread count. Per head: lam, hbeta, oscale, Nt logtau, Nt logw.
  const int W = 3 + 2 * Nt;
  std::vector<double> part(heads * W, 0.0);
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      auto at = [&](int t) { return qkvg + (static_cast<size_t>(b) * T + t) * tok + static_cast<size_t>(h) * 4 * HD; };
      auto dat = [&](int t) { return dqkvg + (static_cast<size_t>(b) * T + t) * tok + static_cast<size_t>(h) * 4 * HD; };
      const size_t DT = static_cast<size_t>(HD) * T;
      std::vector<float> KT(DT), GT(DT), VT(DT), UT(DT), dKT(DT, 0.0f), dGT(DT, 0.0f), dVT(DT, 0.0f), accT(DT, 0.0f);
      const size_t RT = static_cast<size_t>(R) * T;
      std::vector<float> dp(RT), s(RT), lk(RT), P(RT), dP(RT), dz(RT), dsf(RT), K(RT), E(Nt * RT), L(Nt * RT),
          inv4tau(Nt), lw(Nt), dyp(R * HD), dw2(R * HD), du(R * HD);
      float Di[R], dsum[R];
      head_consts(inv4tau, lw, tau, logw, h, Nt);
      const float hb = hbeta[h], os = oscale[h];
      const Head hp{inv4tau.data(), lw.data(), hb, Nt};
      for (int t = 0; t < T; ++t) {
        const size_t row = ((static_cast<size_t>(b) * T + t) * NH + h) * HD;
        for (int e = 0; e < HD; ++e) {
          KT[e * static_cast<size_t>(T) + t] = at(t)[HD + e];
          VT[e * static_cast<size_t>(T) + t] = at(t)[2 * HD + e];
          GT[e * static_cast<size_t>(T) + t] = at(t)[3 * HD + e];
          UT[e * static_cast<size_t>(T) + t] = u[row + e];
        }
      }
      double p_lam = 0, p_hb = 0, p_os = 0;
      std::vector<double> p_tau(Nt, 0.0), p_w(Nt, 0.0);
      for (int i1 = T - 1; i1 >= 0; i1 -= R) {
        const int i0 = std::max(0, i1 - R + 1), nr = i1 - i0 + 1, n = i1 + 1;  // rows i0..i1, keys 0..i1
        const float *qs[R], *gs[R];
        for (int r = 0; r < nr; ++r) qs[r] = at(i0 + r), gs[r] = at(i0 + r) + 3 * HD;
        block_logits(qs, gs, nr, KT.data(), GT.data(), T, n, HD, cdp, hp, dp.data(), s.data(), lk.data(), E.data(),
                     L.data(), K.data());
        for (int r = 0; r < nr; ++r) {
          const int i = i0 + r;
          const size_t row = ((static_cast<size_t>(b) * T + i) * NH + h) * HD;
          float *dypr = dyp.data() + r * HD, *dw2r = dw2.data() + r * HD;
          float gos = 0.0f;  // y = os y', y' = (1 - alpha) u + alpha w2
          for (int e = 0; e < HD; ++e) {
            gos += dy[row + e] * ((1.0f - alpha) * u[row + e] + alpha * w2[row + e]);
            dypr[e] = os * dy[row + e];
            dw2r[e] = alpha * dypr[e];
          }
          p_os += gos;
          const float Li = lse[(static_cast<size_t>(b) * NH + h) * T + i];
          float* Pr = P.data() + static_cast<size_t>(r) * T;
          const float* dpr = dp.data() + static_cast<size_t>(r) * T;
          const float* lkr = lk.data() + static_cast<size_t>(r) * T;
#pragma omp simd
          for (int j = 0; j < n; ++j) Pr[j] = j <= i ? exp_scalar(lam * dpr[j] + (1.0f - lam) * lkr[j] - Li) : 0.0f;
        }
        // du_i = (1 - alpha) dy'_i + sum_{k >= i} P_ki dw2_k: rows k > i1 are in accT, the block's here
        for (int r = 0; r < nr; ++r) {
          const int i = i0 + r;
          const size_t row = ((static_cast<size_t>(b) * T + i) * NH + h) * HD;
          float* dur = du.data() + r * HD;
          for (int e = 0; e < HD; ++e) dur[e] = (1.0f - alpha) * dyp[r * HD + e] + accT[e * static_cast<size_t>(T) + i];
          for (int k = r; k < nr; ++k) {
            const float pki = P[static_cast<size_t>(k) * T + i];
            for (int e = 0; e < HD; ++e) dur[e] += pki * dw2[k * HD + e];
          }
          float d = 0.0f;
          for (int e = 0; e < HD; ++e) d += dw2[r * HD + e] * w2[row + e] + dur[e] * u[row + e];
          Di[r] = d;
        }
        for (int r = 0; r < nr; ++r) std::fill(dP.begin() + static_cast<size_t>(r) * T, dP.begin() + static_cast<size_t>(r) * T + n, 0.0f);
        for (int e = 0; e < HD; ++e) {
          const size_t o = e * static_cast<size_t>(T);
          float* acc = accT.data() + o;
          float* dv = dVT.data() + o;
          const float* ur = UT.data() + o;
          const float* vr = VT.data() + o;
          for (int r = 0; r < nr; ++r) {
            const float a = dw2[r * HD + e], c = du[r * HD + e];
            const float* Pr = P.data() + static_cast<size_t>(r) * T;
            float* dPr = dP.data() + static_cast<size_t>(r) * T;
#pragma omp simd
            for (int j = 0; j < n; ++j) {
              dPr[j] += a * ur[j] + c * vr[j];  // dP_ij = dw2_i . u_j + du_i . v_j
              acc[j] += a * Pr[j];              // for du_j of the rows still to come (j < i0)
              dv[j] += c * Pr[j];
            }
          }
        }
        for (int r = 0; r < nr; ++r) {
          const size_t o = static_cast<size_t>(r) * T;
          const float *Pr = P.data() + o, *dPr = dP.data() + o, *dpr = dp.data() + o, *lkr = lk.data() + o,
                      *sr = s.data() + o, *Kr = K.data() + o;
          float *dzr = dz.data() + o, *dsr = dsf.data() + o;
          float glam = 0.0f;
          const float Dr = Di[r];
#pragma omp simd reduction(+ : glam)
          for (int j = 0; j < n; ++j) {
            dzr[j] = Pr[j] * (dPr[j] - Dr);  // 0 past the diagonal
            glam += dzr[j] * (dpr[j] - lkr[j]);
            dsr[j] = 0.0f;
          }
          p_lam += glam;
          // logK's gradients: r_t = E_t / K is the responsibility of scale t
          float ghb = 0.0f;
          for (int t = 0; t < Nt; ++t) {
            const float* Et = E.data() + (static_cast<size_t>(r) * Nt + t) * T;
            const float* Lt = L.data() + (static_cast<size_t>(r) * Nt + t) * T;
            const float c4 = 1.0f / inv4tau[t];  // 4 tau_t
            float gt = 0.0f, gw = 0.0f, gh = 0.0f;
#pragma omp simd reduction(+ : gt, gw, gh)
            for (int j = 0; j < n; ++j) {
              const float rr = (1.0f - lam) * dzr[j] * Et[j] / Kr[j];  // dL/dlogK * r_t
              const float inv = 1.0f / (c4 + sr[j]);
              gw += rr;
              gt += rr * hb * sr[j] * inv;
              gh -= rr * Lt[j];
              dsr[j] -= rr * hb * inv;  // d logK / ds
            }
            p_tau[t] += gt;
            p_w[t] += gw;
            ghb += gh;
          }
          p_hb += ghb;
          float sum = 0.0f;
          for (int j = 0; j < n; ++j) sum += dsr[j];
          dsum[r] = sum;
        }
        // dp = cdp q_i . k_j; s = |g_i - g_j|^2
        for (int e = 0; e < HD; ++e) {
          const size_t o = e * static_cast<size_t>(T);
          const float* kr = KT.data() + o;
          const float* gr = GT.data() + o;
          float* dk = dKT.data() + o;
          float* dg = dGT.data() + o;
          for (int r = 0; r < nr; ++r) {
            const float* dzr = dz.data() + static_cast<size_t>(r) * T;
            const float* dsr = dsf.data() + static_cast<size_t>(r) * T;
            const float qe = cdp * lam * qs[r][e], ge = gs[r][e];
            float aq = 0.0f, ag = 0.0f;
#pragma omp simd reduction(+ : aq, ag)
            for (int j = 0; j < n; ++j) {
              aq += dzr[j] * kr[j];
              ag += dsr[j] * gr[j];
              dk[j] += dzr[j] * qe;
              dg[j] += 2.0f * dsr[j] * (gr[j] - ge);
            }
            dat(i0 + r)[e] = cdp * lam * aq;
            dg[i0 + r] += 2.0f * (ge * dsum[r] - ag);
          }
        }
      }
      // k, v, g rows; whitening backward: dg = r (dg~ - mean dg~ - g~ mean(dg~ g~))
      for (int t = 0; t < T; ++t) {
        float* d = dat(t);
        const float* g = at(t) + 3 * HD;
        float m1 = 0.0f, m2 = 0.0f;
        for (int e = 0; e < HD; ++e) {
          const size_t o = e * static_cast<size_t>(T) + t;
          d[HD + e] = dKT[o];
          d[2 * HD + e] = dVT[o];
          m1 += dGT[o];
          m2 += dGT[o] * g[e];
        }
        m1 /= HD;
        m2 /= HD;
        const float r = rstd[(static_cast<size_t>(b) * T + t) * NH + h];
        for (int e = 0; e < HD; ++e) d[3 * HD + e] = r * (dGT[e * static_cast<size_t>(T) + t] - m1 - g[e] * m2);
      }
      double* pp = part.data() + (static_cast<size_t>(b) * NH + h) * W;
      pp[0] = p_lam;
      pp[1] = p_hb;
      pp[2] = p_os;
      for (int t = 0; t < Nt; ++t) pp[3 + t] = p_tau[t], pp[3 + Nt + t] = p_w[t];
    }
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      const double* pp = part.data() + (static_cast<size_t>(b) * NH + h) * W;
      *g_lam += pp[0];
      g_hbeta[h] += pp[1];
      g_oscale[h] += pp[2];
      for (int t = 0; t < Nt; ++t) g_logtau[h * Nt + t] += pp[3 + t], g_logw[h * Nt + t] += pp[3 + Nt + t];
    }
}

}  // namespace lossytp::cpu
