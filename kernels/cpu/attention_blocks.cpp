// Blockwise causal attention by global positions: the building block of context-parallel
// attention (ring attention, all-gather and all-to-all variants; models/context_parallel.*).
// A block is the attention of Tq queries at global positions q_pos.. against Tk keys at
// k_pos..; key j is visible to query i iff k_pos + j <= q_pos + i. Blocks of one query chunk
// against several key chunks are combined with attention_merge (log-sum-exp weights), and the
// backward of each block takes the FULL lse and delta of the merged result, so a block's
// gradients are exactly the full attention's gradients restricted to its keys.
//
// Layouts are head-major and contiguous (q [B, NH, Tq, HD], k, v [B, NKV, Tk, HD]), unlike the
// fused kernel of attention.cpp. The arithmetic is that of attention.cpp, simpler:
//  - the forward runs one (b, h) per thread (independent outputs); the backward runs one
//    (b, kv head) per thread, its R = NH / NKV query heads in order, so dk/dv accumulate without
//    races and in a fixed order (results do not depend on the thread count);
//  - a head's vectors are gathered into 64-byte aligned buffers zero-padded to Dp = HD rounded
//    up to 16 and to whole 64-row tiles: Qs = q / sqrt(HD), K, V and their transposes Kt, Vt;
//  - query tiles of 64 rows against key tiles of 64: key tiles wholly above the causal diagonal
//    of the query tile are skipped; masking only touches the rows whose visible end falls inside
//    the tile;
//  - forward: online softmax over the key tiles (running max and sum per row);
//  - backward: P = exp(S - lse) recomputed per tile; dV += P^T dO, dP = dO V^T,
//    dS = P (dP - delta), dQ += dS K, dK += dS^T Qs (1/sqrt(HD) applied to dQ at the end; dK
//    needs none since Qs carries it).
// All tile products run on one register-blocked micro-kernel (4 rows x up to 64 columns, GCC
// vector extensions) with B row-major contiguous and A read element by element (so A^T is
// free). No BLAS: the pthread OpenBLAS must not be called from inside OpenMP regions.
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd_exp.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>

namespace lossytp::cpu {

namespace {

constexpr int kT = 64;  // query rows per tile = keys per key tile
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

typedef float v16 __attribute__((vector_size(64)));

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

// C[MR, 16 NV] (+)= A[MR, K] B[K, 16 NV]; A(r, k) = A[r ars + k acs], B row k at B + k ldb.
template <int MR, int NV>
inline void micro(int K, const float* A, ptrdiff_t ars, ptrdiff_t acs, const float* B,
                  ptrdiff_t ldb, float* C, ptrdiff_t ldc, bool acc) {
  v16 c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = acc ? load16(C + r * ldc + 16 * v) : v16{};
  for (int k = 0; k < K; ++k) {
    v16 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load16(B + k * ldb + 16 * v);
    for (int r = 0; r < MR; ++r) {
      const float a = A[r * ars + k * acs];
      for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store16(C + r * ldc + 16 * v, c[r][v]);
}

template <int MR>
inline void micro_rows(int nv, int K, const float* A, ptrdiff_t ars, ptrdiff_t acs,
                       const float* B, ptrdiff_t ldb, float* C, ptrdiff_t ldc, bool acc) {
  switch (nv) {
    case 1: micro<MR, 1>(K, A, ars, acs, B, ldb, C, ldc, acc); break;
    case 2: micro<MR, 2>(K, A, ars, acs, B, ldb, C, ldc, acc); break;
    case 3: micro<MR, 3>(K, A, ars, acs, B, ldb, C, ldc, acc); break;
    default: micro<MR, 4>(K, A, ars, acs, B, ldb, C, ldc, acc); break;
  }
}

// C[M, N] (+)= A[M, K] B[K, N], N a multiple of 16 (the padded buffers guarantee it).
void gemm(int M, int N, int K, const float* A, ptrdiff_t ars, ptrdiff_t acs, const float* B,
          ptrdiff_t ldb, float* C, ptrdiff_t ldc, bool acc) {
  for (int n0 = 0; n0 < N; n0 += 64) {
    const int nv = std::min(64, N - n0) / 16;
    int m = 0;
    for (; m + 4 <= M; m += 4)
      micro_rows<4>(nv, K, A + m * ars, ars, acs, B + n0, ldb, C + m * ldc + n0, ldc, acc);
    const float* a = A + m * ars;
    float* c = C + m * ldc + n0;
    switch (M - m) {
      case 1: micro_rows<1>(nv, K, a, ars, acs, B + n0, ldb, c, ldc, acc); break;
      case 2: micro_rows<2>(nv, K, a, ars, acs, B + n0, ldb, c, ldc, acc); break;
      case 3: micro_rows<3>(nv, K, a, ars, acs, B + n0, ldb, c, ldc, acc); break;
      default: break;
    }
  }
}

// Per-thread scratch, kept between calls (64-byte aligned, contents undefined).
class Scratch {
 public:
  ~Scratch() { std::free(p_); }
  float* get(size_t n) {
    if (n > cap_) {
      std::free(p_);
      cap_ = 0;
      p_ = static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64));
      if (!p_) throw std::bad_alloc();
      cap_ = n;
    }
    return p_;
  }

 private:
  float* p_ = nullptr;
  size_t cap_ = 0;
};
thread_local Scratch tl_scratch;

// Shapes of the padded per-thread buffers.
struct Pad {
  int Dp, Tqp, Tkp;
  Pad(int Tq, int Tk, int HD) : Dp(round_up(HD, 16)), Tqp(round_up(Tq, kT)), Tkp(round_up(Tk, kT)) {}
};

// dst[Tp, Dp] = s * src[T, HD], zero padded.
void gather_rows(float* dst, const float* src, int T, int Tp, int HD, int Dp, float s) {
  for (int t = 0; t < Tp; ++t) {
    float* d = dst + static_cast<size_t>(t) * Dp;
    if (t < T) {
      const float* x = src + static_cast<size_t>(t) * HD;
      for (int c = 0; c < HD; ++c) d[c] = s * x[c];
      for (int c = HD; c < Dp; ++c) d[c] = 0.0f;
    } else {
      std::fill(d, d + Dp, 0.0f);
    }
  }
}
// dst[Dp, Tp] = src[Tp, Dp]^T (src already padded).
void transpose(float* dst, const float* src, int Tp, int Dp) {
  for (int t0 = 0; t0 < Tp; t0 += 16)
    for (int c = 0; c < Dp; ++c)
      for (int t = t0; t < t0 + 16; ++t)
        dst[static_cast<size_t>(c) * Tp + t] = src[static_cast<size_t>(t) * Dp + c];
}

inline float exp1(float x) { return simd::exp_scalar(x); }

// Visible end of query row i: keys [0, end) are visible (0 <= end <= Tk).
inline int visible_end(long long off, int i, int Tk) {
  const long long e = off + i + 1;
  return static_cast<int>(std::clamp<long long>(e, 0, Tk));
}

void check_heads(int NH, int NKV) {
  if (NKV <= 0 || NH % NKV != 0)
    throw std::invalid_argument("attention blocks: NH must be a multiple of NKV");
}

}  // namespace

void attention_block_forward(float* o, float* lse, const float* q, const float* k, const float* v,
                             int B, int NH, int NKV, int Tq, int Tk, int HD, int q_pos,
                             int k_pos) {
  check_heads(NH, NKV);
  if (B <= 0 || NH <= 0 || Tq <= 0 || HD <= 0) return;
  const int R = NH / NKV;
  const Pad p(Tq, Tk, HD);
  const int Dp = p.Dp, Tkp = p.Tkp;
  const long long off = static_cast<long long>(q_pos) - k_pos;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
#pragma omp parallel for schedule(dynamic, 1)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH, g = h / R;
    const size_t qoff = static_cast<size_t>(bh) * Tq * HD;
    const size_t koff = (static_cast<size_t>(b) * NKV + g) * Tk * HD;
    float* out = o + qoff;
    float* lrow = lse + static_cast<size_t>(bh) * Tq;
    // Queries that see no key at all (the whole block, or a prefix of rows).
    const int e_last = Tk > 0 ? visible_end(off, Tq - 1, Tk) : 0;
    if (e_last == 0) {
      std::fill(out, out + static_cast<size_t>(Tq) * HD, 0.0f);
      std::fill(lrow, lrow + Tq, kNegInf);
      continue;
    }
    // Scratch: Kt [Dp, Tkp], V [Tkp, Dp], Qs tile [kT, Dp], S [kT, kT], O [kT, Dp], m, l.
    float* base = tl_scratch.get(2 * static_cast<size_t>(Tkp) * Dp + 2 * kT * Dp + kT * kT +
                                 2 * kT + static_cast<size_t>(Tkp) * Dp);
    float* Kt = base;
    float* V = Kt + static_cast<size_t>(Tkp) * Dp;
    float* Qs = V + static_cast<size_t>(Tkp) * Dp;
    float* S = Qs + kT * Dp;
    float* O = S + kT * kT;
    float* m = O + kT * Dp;
    float* l = m + kT;
    float* Ktmp = l + kT;
    gather_rows(Ktmp, k + koff, Tk, Tkp, HD, Dp, 1.0f);
    transpose(Kt, Ktmp, Tkp, Dp);
    gather_rows(V, v + koff, Tk, Tkp, HD, Dp, 1.0f);

    for (int i0 = 0; i0 < Tq; i0 += kT) {
      const int nq = std::min(kT, Tq - i0);
      const int e_max = visible_end(off, i0 + nq - 1, Tk);
      if (e_max == 0) {  // this tile sees nothing
        std::fill(out + static_cast<size_t>(i0) * HD, out + static_cast<size_t>(i0 + nq) * HD, 0.0f);
        std::fill(lrow + i0, lrow + i0 + nq, kNegInf);
        continue;
      }
      gather_rows(Qs, q + qoff + static_cast<size_t>(i0) * HD, nq, nq, HD, Dp, scale);
      std::fill(O, O + static_cast<size_t>(nq) * Dp, 0.0f);
      std::fill(m, m + nq, kNegInf);
      std::fill(l, l + nq, 0.0f);
      for (int j0 = 0; j0 < e_max; j0 += kT) {
        // S = Qs Kt[:, j0:j0+kT]
        gemm(nq, kT, Dp, Qs, Dp, 1, Kt + j0, Tkp, S, kT, false);
        for (int r = 0; r < nq; ++r) {
          float* s = S + r * kT;
          const int e = visible_end(off, i0 + r, Tk) - j0;  // visible columns of this row
          if (e < kT) std::fill(s + std::max(e, 0), s + kT, kNegInf);
          float mx = kNegInf;
          for (int c = 0; c < kT; ++c) mx = std::max(mx, s[c]);
          const float m_new = std::max(m[r], mx);
          if (m_new == kNegInf) {  // nothing visible yet in this row
            std::fill(s, s + kT, 0.0f);
            continue;
          }
          const float alpha = exp1(m[r] - m_new);
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int c = 0; c < kT; ++c) {
            const float pc = exp1(s[c] - m_new);
            s[c] = pc;
            sum += pc;
          }
          l[r] = l[r] * alpha + sum;
          m[r] = m_new;
          if (alpha != 1.0f) {
            float* orow = O + r * Dp;
#pragma omp simd
            for (int c = 0; c < Dp; ++c) orow[c] *= alpha;
          }
        }
        // O += P V[j0:j0+kT]
        gemm(nq, Dp, kT, S, kT, 1, V + static_cast<size_t>(j0) * Dp, Dp, O, Dp, true);
      }
      for (int r = 0; r < nq; ++r) {
        float* dst = out + static_cast<size_t>(i0 + r) * HD;
        if (l[r] > 0.0f) {
          const float inv = 1.0f / l[r];
          for (int c = 0; c < HD; ++c) dst[c] = O[r * Dp + c] * inv;
          lrow[i0 + r] = m[r] + std::log(l[r]);
        } else {
          std::fill(dst, dst + HD, 0.0f);
          lrow[i0 + r] = kNegInf;
        }
      }
    }
  }
}

void attention_merge(float* o, float* lse, const float* o2, const float* lse2, size_t rows,
                     int HD) {
#pragma omp parallel for schedule(static)
  for (long long r = 0; r < static_cast<long long>(rows); ++r) {
    const float a = lse[r], b = lse2[r];
    float* x = o + static_cast<size_t>(r) * HD;
    const float* y = o2 + static_cast<size_t>(r) * HD;
    if (b == kNegInf) continue;  // nothing to add
    if (a == kNegInf) {          // nothing yet: take the block as is
      std::memcpy(x, y, static_cast<size_t>(HD) * sizeof(float));
      lse[r] = b;
      continue;
    }
    // lse = max + log(1 + e^(min - max)); weights e^(a - lse), e^(b - lse).
    const float mx = std::max(a, b);
    const float l = mx + std::log1p(std::exp(std::min(a, b) - mx));
    const float wa = std::exp(a - l), wb = std::exp(b - l);
#pragma omp simd
    for (int c = 0; c < HD; ++c) x[c] = wa * x[c] + wb * y[c];
    lse[r] = l;
  }
}

void attention_delta(float* delta, const float* dout, const float* o, size_t rows, int HD) {
#pragma omp parallel for schedule(static)
  for (long long r = 0; r < static_cast<long long>(rows); ++r) {
    const float* x = dout + static_cast<size_t>(r) * HD;
    const float* y = o + static_cast<size_t>(r) * HD;
    float s = 0.0f;
    for (int c = 0; c < HD; ++c) s += x[c] * y[c];
    delta[r] = s;
  }
}

void attention_block_backward(float* dq, float* dk, float* dv, const float* q, const float* k,
                              const float* v, const float* dout, const float* lse,
                              const float* delta, int B, int NH, int NKV, int Tq, int Tk, int HD,
                              int q_pos, int k_pos) {
  check_heads(NH, NKV);
  if (B <= 0 || NH <= 0 || Tq <= 0 || Tk <= 0 || HD <= 0) return;
  const int R = NH / NKV;
  const Pad p(Tq, Tk, HD);
  const int Dp = p.Dp, Tkp = p.Tkp;
  const long long off = static_cast<long long>(q_pos) - k_pos;
  if (visible_end(off, Tq - 1, Tk) == 0) return;  // no query sees any key
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
#pragma omp parallel for schedule(dynamic, 1)
  for (int bg = 0; bg < B * NKV; ++bg) {
    const int b = bg / NKV, g = bg % NKV;
    const size_t koff = static_cast<size_t>(bg) * Tk * HD;
    // Scratch: K, V, dK, dV [Tkp, Dp]; Kt, Vt [Dp, Tkp]; Qs, dO, dQ [kT, Dp]; P, dS [kT, kT].
    const size_t kv = static_cast<size_t>(Tkp) * Dp;
    float* base = tl_scratch.get(6 * kv + 3 * kT * Dp + 2 * kT * kT);
    float* K = base;
    float* V = K + kv;
    float* dK = V + kv;
    float* dV = dK + kv;
    float* Kt = dV + kv;
    float* Vt = Kt + kv;
    float* Qs = Vt + kv;
    float* dO = Qs + kT * Dp;
    float* dQ = dO + kT * Dp;
    float* P = dQ + kT * Dp;
    float* dS = P + kT * kT;
    gather_rows(K, k + koff, Tk, Tkp, HD, Dp, 1.0f);
    gather_rows(V, v + koff, Tk, Tkp, HD, Dp, 1.0f);
    transpose(Kt, K, Tkp, Dp);
    transpose(Vt, V, Tkp, Dp);
    std::fill(dK, dK + kv, 0.0f);
    std::fill(dV, dV + kv, 0.0f);

    for (int hr = 0; hr < R; ++hr) {
      const size_t bh = static_cast<size_t>(b) * NH + static_cast<size_t>(g) * R + hr;
      const size_t qoff = bh * Tq * HD;
      const float* lrow = lse + bh * Tq;
      const float* drow = delta + bh * Tq;
      for (int i0 = 0; i0 < Tq; i0 += kT) {
        const int nq = std::min(kT, Tq - i0);
        const int e_max = visible_end(off, i0 + nq - 1, Tk);
        if (e_max == 0) continue;
        gather_rows(Qs, q + qoff + static_cast<size_t>(i0) * HD, nq, nq, HD, Dp, scale);
        gather_rows(dO, dout + qoff + static_cast<size_t>(i0) * HD, nq, nq, HD, Dp, 1.0f);
        std::fill(dQ, dQ + static_cast<size_t>(nq) * Dp, 0.0f);
        for (int j0 = 0; j0 < e_max; j0 += kT) {
          // P = exp(Qs Kt - lse) on visible keys; dP = dO Vt (into dS).
          gemm(nq, kT, Dp, Qs, Dp, 1, Kt + j0, Tkp, P, kT, false);
          gemm(nq, kT, Dp, dO, Dp, 1, Vt + j0, Tkp, dS, kT, false);
          for (int r = 0; r < nq; ++r) {
            float* pr = P + r * kT;
            float* dsr = dS + r * kT;
            const float L = lrow[i0 + r];
            const int e = std::min(visible_end(off, i0 + r, Tk) - j0, kT);
            if (L == kNegInf || e <= 0) {
              std::fill(pr, pr + kT, 0.0f);
              std::fill(dsr, dsr + kT, 0.0f);
              continue;
            }
            const float D = drow[i0 + r];
#pragma omp simd
            for (int c = 0; c < kT; ++c) {
              const float pc = exp1(pr[c] - L);
              pr[c] = pc;
              dsr[c] = pc * (dsr[c] - D);
            }
            for (int c = e; c < kT; ++c) pr[c] = dsr[c] = 0.0f;
          }
          const size_t j0d = static_cast<size_t>(j0) * Dp;
          // dV += P^T dO; dK += dS^T Qs; dQ += dS K.
          gemm(kT, Dp, nq, P, 1, kT, dO, Dp, dV + j0d, Dp, true);
          gemm(kT, Dp, nq, dS, 1, kT, Qs, Dp, dK + j0d, Dp, true);
          gemm(nq, Dp, kT, dS, kT, 1, K + j0d, Dp, dQ, Dp, true);
        }
        float* dst = dq + qoff + static_cast<size_t>(i0) * HD;
        for (int r = 0; r < nq; ++r)
          for (int c = 0; c < HD; ++c)
            dst[static_cast<size_t>(r) * HD + c] += scale * dQ[r * Dp + c];
      }
    }
    for (int t = 0; t < Tk; ++t)
      for (int c = 0; c < HD; ++c) {
        dk[koff + static_cast<size_t>(t) * HD + c] += dK[static_cast<size_t>(t) * Dp + c];
        dv[koff + static_cast<size_t>(t) * HD + c] += dV[static_cast<size_t>(t) * Dp + c];
      }
  }
}

}  // namespace lossytp::cpu
