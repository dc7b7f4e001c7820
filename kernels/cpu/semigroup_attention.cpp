// Semigroup attention, the "generator step" of oroikono/Megatron-LM-new-attention (HEAD):
//   o = P v, P = causal softmax(q k^T / sqrt(HD) - c |i - j|), c = kappa / xi
//   y = (1 - t) v + t o
// P is a softmax with an additive distance bias, so this is the flash-attention kernel of
// kernels/cpu/attention.cpp (same structure, on the same tile helpers, kernels/cpu/attention_tiles.h)
// with the bias added to each score tile and the generator-step axpy at the ends:
// work is split over (batch, head) pairs, one thread does all of a head (so the result does not
// depend on the thread count); the head's q / sqrt(HD), k and v are gathered into contiguous
// zero-padded [Tp, Dp] buffers; for each tile of 64 queries and each key tile j <= i:
//   S^T = K_j Qs_i^T (keys x queries) on the 4 x 64 register-blocked micro-kernel,
//   S^T(k, q) -= c (i - j) (one FMA per score), online softmax, O_i += P V_j.
// Forward output: o = O / l, y = (1 - t) v + t o, lse = m + log l (saved for the backward).
// Backward, with dO = t dy, D = rowsum(dO * o) and P recomputed from lse (bias included):
//   dV_j += P^T dO_i; dP^T = V_j dO_i^T; dS^T = P^T * (dP^T - D); dQ_i += dS K_j; dK_j += dS^T Qs_i;
//   dc -= sum dS (i - j); dt = sum dy . (o - v); dv += (1 - t) dy (the direct path).
// No T x T matrix per head beyond one 64 x 64 tile.
// Layout: qkv [B, T, 3, NH, HD] (the fork's block-major [Q | K | V] rows of a fused projection,
// one TP rank's heads in each block); o, y: [B, T, NH, HD]; lse: [B, NH, T].
#include "kernels/cpu/attention_tiles.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/simd_exp.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace lossytp::cpu {

namespace {

// The tile machinery (workspace, micro-kernel, tile products, prefetching, gathers and
// transposes) is shared with attention.cpp.
using namespace tiles;

#if defined(__AVX512F__)
using simd::exp16;
#endif
using simd::exp_scalar;

thread_local Workspace fwd_workspace, bwd_workspace;

// Per-head geometry: T real tokens padded to Tp (a multiple of the tile), HD to Dp (of kVec).
struct Dims {
  int T, NH, HD, Tp, Dp, ntiles;
  size_t tok;  // floats per token of qkv: 3 NH HD
  Dims(int T_, int NH_, int HD_)
      : T(T_), NH(NH_), HD(HD_), Tp(round_up(T_, kTile)), Dp(round_up(HD_, kVec)),
        ntiles(round_up(T_, kTile) / kTile), tok(static_cast<size_t>(3) * NH_ * HD_) {}
  size_t head_elems() const { return static_cast<size_t>(Tp) * Dp; }
};

// dst [Tp, Dp] = s * (T rows of HD floats at src, `stride` floats apart); padding untouched.
void gather(float* dst, const float* src, size_t stride, float s, const Dims& d) {
  gather_rows(dst, src, stride, s, d.T, d.HD, d.Dp);
}

// The distance bias of a tile st[k][q] (key j = j0 + k, query i = i0 + q, base = i0 - j0):
// logit = score - c * (base + q - k). The distance is an exact small integer in float, and
// c * distance is one rounding, like the fork's c * |i - j|.

// One online-softmax step on a tile st[k][q] of scores S^T, in place: st becomes
// P^T = exp(S^T - c dist - m_new) (0 above the diagonal); each query's running max m, sum l and
// output row o[q, :] (rescaled by exp(m_old - m_new)) are updated. Queries run along the rows,
// so the max and the sum are vertical (vector) operations.
template <bool kDiag>
void online_softmax_tile(float* st, float* m, float* l, float* o, int Dp, float c, int base) {
  alignas(64) float mnew[kTile], lsum[kTile];
#if defined(__AVX512F__)
  static_assert(kTile == 4 * kVec);
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512 cv = _mm512_set1_ps(c);
  __m512i qidx[4];
  __m512 dist0[4], mx[4], sum[4];
  for (int v = 0; v < 4; ++v) {
    qidx[v] = _mm512_add_epi32(lane, _mm512_set1_epi32(v * kVec));
    dist0[v] = _mm512_cvtepi32_ps(_mm512_add_epi32(qidx[v], _mm512_set1_epi32(base)));
    mx[v] = _mm512_loadu_ps(m + v * kVec);
    sum[v] = _mm512_setzero_ps();
  }
  // the biased logits are written back, then exponentiated in a second pass
  for (int k = 0; k < kTile; ++k) {
    float* row = st + k * kTile;
    const __m512 kf = _mm512_set1_ps(static_cast<float>(k));
    for (int v = 0; v < 4; ++v) {
      const __m512 x = _mm512_sub_ps(_mm512_loadu_ps(row + v * kVec),
                                     _mm512_mul_ps(cv, _mm512_sub_ps(dist0[v], kf)));
      _mm512_storeu_ps(row + v * kVec, x);
      if (kDiag) {  // valid where q >= k
        const __mmask16 ok = _mm512_cmpge_epi32_mask(qidx[v], _mm512_set1_epi32(k));
        mx[v] = _mm512_mask_max_ps(mx[v], ok, x, mx[v]);
      } else {
        mx[v] = _mm512_max_ps(x, mx[v]);
      }
    }
  }
  for (int k = 0; k < kTile; ++k) {
    float* row = st + k * kTile;
    for (int v = 0; v < 4; ++v) {
      __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(row + v * kVec), mx[v]));
      if (kDiag) p = _mm512_maskz_mov_ps(_mm512_cmpge_epi32_mask(qidx[v], _mm512_set1_epi32(k)), p);
      _mm512_storeu_ps(row + v * kVec, p);
      sum[v] = _mm512_add_ps(sum[v], p);
    }
  }
  for (int v = 0; v < 4; ++v) {
    _mm512_store_ps(mnew + v * kVec, mx[v]);
    _mm512_store_ps(lsum + v * kVec, sum[v]);
  }
#else
  for (int q = 0; q < kTile; ++q) mnew[q] = m[q], lsum[q] = 0.0f;
  for (int k = 0; k < kTile; ++k) {
    float* row = st + k * kTile;
    for (int q = 0; q < kTile; ++q) {
      row[q] -= c * static_cast<float>(base + q - k);
      const float v = (kDiag && q < k) ? -kInf : row[q];
      mnew[q] = v > mnew[q] ? v : mnew[q];
    }
  }
  for (int k = 0; k < kTile; ++k) {
    float* row = st + k * kTile;
    for (int q = 0; q < kTile; ++q) {
      const float p = (kDiag && q < k) ? 0.0f : exp_scalar(row[q] - mnew[q]);
      row[q] = p;
      lsum[q] += p;
    }
  }
#endif
  update_running(m, l, o, Dp, mnew, lsum);
}

// P^T = exp(S^T - c dist - lse) in place (0 above the diagonal); st[k][q], L[q] = lse of query q.
template <bool kDiag>
void probs_tile(float* st, const float* L, float c, int base) {
#if defined(__AVX512F__)
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512 cv = _mm512_set1_ps(c);
  __m512 lv[4], dist0[4];
  __m512i qidx[4];
  for (int v = 0; v < 4; ++v) {
    lv[v] = _mm512_loadu_ps(L + v * kVec);
    qidx[v] = _mm512_add_epi32(lane, _mm512_set1_epi32(v * kVec));
    dist0[v] = _mm512_cvtepi32_ps(_mm512_add_epi32(qidx[v], _mm512_set1_epi32(base)));
  }
  for (int k = 0; k < kTile; ++k) {
    float* row = st + k * kTile;
    const __m512 kf = _mm512_set1_ps(static_cast<float>(k));
    for (int v = 0; v < 4; ++v) {
      const __m512 x = _mm512_sub_ps(_mm512_loadu_ps(row + v * kVec),
                                     _mm512_mul_ps(cv, _mm512_sub_ps(dist0[v], kf)));
      __m512 p = exp16(_mm512_sub_ps(x, lv[v]));
      if (kDiag) p = _mm512_maskz_mov_ps(_mm512_cmpge_epi32_mask(qidx[v], _mm512_set1_epi32(k)), p);
      _mm512_storeu_ps(row + v * kVec, p);
    }
  }
#else
  for (int k = 0; k < kTile; ++k) {
    float* row = st + k * kTile;
    for (int q = 0; q < kTile; ++q)
      row[q] = (kDiag && q < k) ? 0.0f
                                : exp_scalar(row[q] - c * static_cast<float>(base + q - k) - L[q]);
  }
#endif
}

// dS^T = P^T * (dP^T - D) in place on dpt (0 above the diagonal); D[q] = rowsum(dO * o).
// Returns sum dS * dist over the tile (dL/dc is minus the sum over all tiles): each query sums
// its 64 keys in float, the 64 queries are then added in double.
template <bool kDiag>
double dscores_tile(float* dpt, const float* pt, const float* D, int base) {
  alignas(64) float acc[kTile] = {};
  for (int k = 0; k < kTile; ++k) {
    float* row = dpt + k * kTile;
    const float* prow = pt + k * kTile;
    const int b = base - k;
#pragma omp simd
    for (int q = 0; q < kTile; ++q) {
      const float ds = (kDiag && q < k) ? 0.0f : prow[q] * (row[q] - D[q]);
      row[q] = ds;
      acc[q] += ds * static_cast<float>(b + q);
    }
  }
  double s = 0.0;
  for (int q = 0; q < kTile; ++q) s += acc[q];
  return s;
}

}  // namespace

void semigroup_attention_forward(float* y, float* o, float* lse, const float* qkv, int B, int T,
                                 int NH, int HD, float t, float c) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const Dims d(T, NH, HD);
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const int nunits = B * NH;
  const int Dp = d.Dp;
  const size_t tile_elems = static_cast<size_t>(kTile) * Dp;
  const size_t ostride = static_cast<size_t>(NH) * HD;  // of o and y
  const size_t tok_bytes = d.tok * sizeof(float);
  const size_t head_bytes = static_cast<size_t>(HD) * sizeof(float);

#pragma omp parallel
  {
    const size_t he = d.head_elems();
    Carver ws(fwd_workspace.get(4 * he + kTile * kTile + tile_elems, T, HD));
    float* const qt = ws.take(he);
    float* const kk = ws.take(he);
    float* const vv = ws.take(he);
    float* const tmp = ws.take(he);
    float* const s = ws.take(kTile * kTile);
    float* const acc = ws.take(tile_elems);
    alignas(64) float m[kTile], l[kTile];

#pragma omp for schedule(static)
    for (int bh = 0; bh < nunits; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const float* base = qkv + static_cast<size_t>(b) * T * d.tok + static_cast<size_t>(h) * HD;
      gather(tmp, base, d.tok, scale, d);
      transpose_tiles(qt, tmp, d.Tp, d.Dp);
      gather(kk, base + NH * HD, d.tok, 1.0f, d);
      gather(vv, base + 2 * NH * HD, d.tok, 1.0f, d);

      // prefetch, spread over the products: the next head's q, k, v and this head's o and y
      PrefetchQueue pq;
      if (bh + 1 < nunits) {
        const int b1 = (bh + 1) / NH, h1 = (bh + 1) % NH;
        const float* base1 = qkv + static_cast<size_t>(b1) * T * d.tok + static_cast<size_t>(h1) * HD;
        for (int part = 0; part < 3; ++part)
          pq.add(RowPrefetcher(base1 + part * NH * HD, tok_bytes, head_bytes, T, false));
      }
      const size_t obase = static_cast<size_t>(b) * T * ostride + static_cast<size_t>(h) * HD;
      pq.add(RowPrefetcher(o + obase, ostride * sizeof(float), head_bytes, T, true));
      pq.add(RowPrefetcher(y + obase, ostride * sizeof(float), head_bytes, T, true));
      pq.plan(d.ntiles * (d.ntiles + 1) / 2 * 2 * (kTile / kMR));

      for (int qi = 0; qi < d.ntiles; ++qi) {
        const int i0 = qi * kTile;
        const float* qti = qt + qi * tile_elems;
        std::fill(acc, acc + tile_elems, 0.0f);
        std::fill(m, m + kTile, -kInf);
        std::fill(l, l + kTile, 0.0f);
        for (int kj = 0; kj <= qi; ++kj) {
          const bool diag = kj == qi;
          const int dbase = i0 - kj * kTile;
          // S^T = K_j Qs_i^T  [keys x queries]
          tile_gemm(kTile, kTile, Dp, kk + kj * tile_elems, Dp, 1, qti, kTile, s, kTile, false,
                    diag ? Tri::kColsFrom : Tri::kNone, pq);
          if (diag)
            online_softmax_tile<true>(s, m, l, acc, Dp, c, dbase);
          else
            online_softmax_tile<false>(s, m, l, acc, Dp, c, dbase);
          // O_i += P V_j, with P(q, k) = s[k][q]
          tile_gemm(kTile, Dp, kTile, s, 1, kTile, vv + kj * tile_elems, Dp, acc, Dp, true,
                    diag ? Tri::kKUpper : Tri::kNone, pq);
        }
        // the real rows: o = O / l, y = (1 - t) v + t o, lse
        const int nrows = std::min(kTile, T - i0);
        for (int rr = 0; rr < nrows; ++rr) {
          const int tok = i0 + rr;
          const float inv = 1.0f / l[rr];
          const float* arow = acc + static_cast<size_t>(rr) * Dp;
          const float* vrow = vv + static_cast<size_t>(tok) * Dp;
          const size_t off = obase + static_cast<size_t>(tok) * ostride;
#pragma omp simd
          for (int e = 0; e < HD; ++e) {
            const float oe = arow[e] * inv;
            o[off + e] = oe;
            y[off + e] = (1.0f - t) * vrow[e] + t * oe;
          }
          lse[static_cast<size_t>(bh) * T + tok] = m[rr] + std::log(l[rr]);
        }
      }
    }
  }
}

void semigroup_attention_backward(float* dqkv, double* dt, double* dc, const float* dy,
                                  const float* qkv, const float* o, const float* lse, int B, int T,
                                  int NH, int HD, float t, float c) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const Dims d(T, NH, HD);
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const int nunits = B * NH;
  const int Dp = d.Dp;
  const size_t tile_elems = static_cast<size_t>(kTile) * Dp;
  const size_t ostride = static_cast<size_t>(NH) * HD;  // of o and dy
  const size_t tok_bytes = d.tok * sizeof(float);
  const size_t head_bytes = static_cast<size_t>(HD) * sizeof(float);
  std::vector<double> part_t(nunits, 0.0), part_c(nunits, 0.0);

#pragma omp parallel
  {
    const size_t he = d.head_elems();
    Carver ws(bwd_workspace.get(9 * he + 2 * padded(d.Tp) + 2 * kTile * kTile, T, HD));
    float* const qs = ws.take(he);
    float* const qt = ws.take(he);
    float* const kk = ws.take(he);
    float* const vv = ws.take(he);
    float* const dob = ws.take(he);
    float* const dot = ws.take(he);
    float* const dq = ws.take(he);
    float* const dk = ws.take(he);
    float* const dv = ws.take(he);
    float* const dvec = ws.take(d.Tp);
    float* const lvec = ws.take(d.Tp);
    float* const p = ws.take(kTile * kTile);
    float* const ds = ws.take(kTile * kTile);

    // dqkv is overwritten: every (b, h) owns its q, k, v columns, so the heads run in parallel.
#pragma omp for schedule(static)
    for (int bh = 0; bh < nunits; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const float* base = qkv + static_cast<size_t>(b) * T * d.tok + static_cast<size_t>(h) * HD;
      gather(qs, base, d.tok, scale, d);
      transpose_tiles(qt, qs, d.Tp, d.Dp);
      gather(kk, base + NH * HD, d.tok, 1.0f, d);
      gather(vv, base + 2 * NH * HD, d.tok, 1.0f, d);
      // dO = t dy (padded, and transposed), D = rowsum(dO * o), dt = sum dy . (o - v); lse
      const size_t obase = static_cast<size_t>(b) * T * ostride + static_cast<size_t>(h) * HD;
      double st = 0.0;
      for (int tok = 0; tok < T; ++tok) {
        const float* gr = dy + obase + static_cast<size_t>(tok) * ostride;
        const float* orow = o + obase + static_cast<size_t>(tok) * ostride;
        const float* vrow = vv + static_cast<size_t>(tok) * Dp;
        if (tok + 6 < T)
          for (int i = 0; i < HD; i += kVec) {
            __builtin_prefetch(gr + 6 * ostride + i);
            __builtin_prefetch(orow + 6 * ostride + i);
          }
        float* dst = dob + static_cast<size_t>(tok) * Dp;
        float acc = 0.0f, at = 0.0f;
#pragma omp simd reduction(+ : acc, at)
        for (int e = 0; e < HD; ++e) {
          dst[e] = t * gr[e];
          acc += dst[e] * orow[e];
          at += gr[e] * (orow[e] - vrow[e]);
        }
        st += at;
        dvec[tok] = acc;
        lvec[tok] = lse[static_cast<size_t>(bh) * T + tok];
      }
      // padded queries: P = 0 whatever the bias (their dO is zero too)
      for (int tok = T; tok < d.Tp; ++tok) lvec[tok] = kInf;
      transpose_tiles(dot, dob, d.Tp, d.Dp);
      std::memset(dq, 0, he * sizeof(float));
      std::memset(dk, 0, he * sizeof(float));
      std::memset(dv, 0, he * sizeof(float));

      // prefetch, spread over the products: the next head's q, k, v, dy and o, and this head's
      // output rows
      PrefetchQueue pq;
      if (bh + 1 < nunits) {
        const int b1 = (bh + 1) / NH, h1 = (bh + 1) % NH;
        const float* base1 = qkv + static_cast<size_t>(b1) * T * d.tok + static_cast<size_t>(h1) * HD;
        for (int part = 0; part < 3; ++part)
          pq.add(RowPrefetcher(base1 + part * NH * HD, tok_bytes, head_bytes, T, false));
        const size_t obase1 = static_cast<size_t>(b1) * T * ostride + static_cast<size_t>(h1) * HD;
        pq.add(RowPrefetcher(dy + obase1, ostride * sizeof(float), head_bytes, T, false));
        pq.add(RowPrefetcher(o + obase1, ostride * sizeof(float), head_bytes, T, false));
      }
      pq.plan(d.ntiles * (d.ntiles + 1) / 2 * 5 * (kTile / kMR));

      double sc = 0.0;
      for (int qi = 0; qi < d.ntiles; ++qi) {
        const int i0 = qi * kTile;
        const float* q = qs + qi * tile_elems;
        const float* qti = qt + qi * tile_elems;
        const float* go = dob + qi * tile_elems;
        const float* goti = dot + qi * tile_elems;
        const float* Li = lvec + i0;
        const float* Di = dvec + i0;
        float* dqi = dq + qi * tile_elems;
        for (int kj = 0; kj <= qi; ++kj) {
          const bool diag = kj == qi;
          const int dbase = i0 - kj * kTile;
          const float* kj_rows = kk + kj * tile_elems;
          // P^T = exp(K_j Qs_i^T - c dist - lse)   [keys x queries]
          tile_gemm(kTile, kTile, Dp, kj_rows, Dp, 1, qti, kTile, p, kTile, false,
                    diag ? Tri::kColsFrom : Tri::kNone, pq);
          if (diag) probs_tile<true>(p, Li, c, dbase); else probs_tile<false>(p, Li, c, dbase);
          // dV_j += P^T dO_i
          tile_gemm(kTile, Dp, kTile, p, kTile, 1, go, Dp, dv + kj * tile_elems, Dp, true,
                    diag ? Tri::kKLower : Tri::kNone, pq);
          // dP^T = V_j dO_i^T
          tile_gemm(kTile, kTile, Dp, vv + kj * tile_elems, Dp, 1, goti, kTile, ds, kTile, false,
                    diag ? Tri::kColsFrom : Tri::kNone, pq);
          // dS^T = P^T * (dP^T - D); dL/dc = -sum dS dist
          sc -= diag ? dscores_tile<true>(ds, p, Di, dbase) : dscores_tile<false>(ds, p, Di, dbase);
          // dQ_i += dS K_j, with dS(q, k) = ds[k][q]
          tile_gemm(kTile, Dp, kTile, ds, 1, kTile, kj_rows, Dp, dqi, Dp, true,
                    diag ? Tri::kKUpper : Tri::kNone, pq);
          // dK_j += dS^T Qs_i
          tile_gemm(kTile, Dp, kTile, ds, kTile, 1, q, Dp, dk + kj * tile_elems, Dp, true,
                    diag ? Tri::kKLower : Tri::kNone, pq);
        }
      }
      // scatter (overwrite) into dqkv: dq / sqrt(HD), dk, dv + (1 - t) dy
      float* dhead = dqkv + static_cast<size_t>(b) * T * d.tok + static_cast<size_t>(h) * HD;
      for (int tok = 0; tok < T; ++tok) {
        float* dst = dhead + static_cast<size_t>(tok) * d.tok;
        const float* gr = dy + obase + static_cast<size_t>(tok) * ostride;
        const float* sq = dq + static_cast<size_t>(tok) * Dp;
        const float* sk = dk + static_cast<size_t>(tok) * Dp;
        const float* sv = dv + static_cast<size_t>(tok) * Dp;
#pragma omp simd
        for (int e = 0; e < HD; ++e) {
          dst[e] = sq[e] * scale;
          dst[NH * HD + e] = sk[e];
          dst[2 * NH * HD + e] = sv[e] + (1.0f - t) * gr[e];
        }
      }
      part_t[bh] = st;
      part_c[bh] = sc;
    }
  }
  double st = 0.0, sc = 0.0;  // a fixed order: the same bits for any thread count
  for (int k = 0; k < nunits; ++k) st += part_t[k], sc += part_c[k];
  *dt += st;
  *dc += sc;
}

}  // namespace lossytp::cpu
