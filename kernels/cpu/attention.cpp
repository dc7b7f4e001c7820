// Causal multi-head self-attention, fused, flash-attention style (Dao et al. 2022), with
// grouped-query attention (GQA): NH query heads share NKV key/value heads, R = NH / NKV query
// heads per group (R = 1: plain multi-head attention).
//
// Work is split over (batch, group) pairs with OpenMP; one thread does all of a group, so the
// result does not depend on the thread count. The group's K and V are gathered once, then its R
// query heads run one after the other against them; in the backward their dK and dV contributions
// accumulate in the same per-group buffers, heads in order (no copy of K/V per head, no
// reduction across threads). With R = 1 this is exactly a loop over (batch, head) pairs. A head's
// vectors are first gathered from the interleaved layouts into contiguous buffers, zero-padded to
// Tp = T rounded up to the tile (64 tokens) and Dp = HD rounded up to 16 floats (one AVX-512
// vector):
//   Qs = q / sqrt(HD) (the softmax scale folded in once), K, V, dO   [Tp, Dp] row-major,
//   Qt, dOt = Qs and dO transposed, tile by tile                     [Tp/64][Dp][64].
// Zero padding is harmless: padded keys lie above the causal diagonal of every real query, and
// padded queries are computed but never written out (their dO is zero in the backward).
//
// Scores are formed transposed, S^T = K_j Qs_i^T (keys x queries), for each query tile i and
// key tile j <= i. With the queries along the rows of a tile, the softmax max and sum of each
// query are vertical vector operations (no horizontal reductions).
// Forward: online softmax over the key tiles (running max m and sum l of each query; the
//   output accumulator rescaled by exp(m_old - m_new)); O_i += P V_j; finally O_i /= l and
//   lse = m + log l.
// Backward, with D = rowsum(dO * O) and P recomputed from lse:
//   P^T = exp(K_j Qs_i^T - lse); dV_j += P^T dO_i; dP^T = V_j dO_i^T; dS^T = P^T * (dP^T - D);
//   dQ_i += dS K_j; dK_j += dS^T Qs_i (dQ is scaled by 1/sqrt(HD) at the end; dK needs no
//   scale since Qs has it).
//
// Every tile product is C (+)= A B with B row-major and contiguous: A is read one element at a
// time (broadcast), so A^T costs nothing. They all run on one register-blocked micro-kernel
// (4 rows x up to 64 columns = 16 AVX-512 accumulators, ~115 GFLOP/s on one Zen 4 core). On a
// diagonal tile the products skip the blocks above the diagonal, so it costs about half.
// The gathers and scatters touch a new 4 KiB page every token or two, which the hardware
// prefetchers do not follow: software prefetches for the next head's inputs (its q, and the next
// group's k and v after a group's last head) and this head's outputs are spread over the
// arithmetic (PrefetchQueue).
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
#include <stdexcept>
#include <string>

namespace lossytp::cpu {

namespace {

// The tile machinery (workspace, micro-kernel, tile products, prefetching, gathers and
// transposes) is shared with semigroup_attention.cpp.
using namespace tiles;

#if defined(__AVX512F__)
using simd::exp16;
#endif
using simd::exp_scalar;

thread_local Workspace fwd_workspace, bwd_workspace;

// Sizes, and the grouped fused qkv layout (Megatron's): a token holds NKV groups, each group
// its R = NH / NKV q vectors, then its k, then its v, HD floats each; (NH + 2 NKV) HD floats in
// all. With NKV = NH a token is [NH][q, k, v][HD].
struct HeadDims {
  int T, NH, NKV, R, HD, Tp, Dp, ntiles;
  size_t tok;  // floats per token of qkv (and dqkv)
  HeadDims(int T_, int NH_, int NKV_, int HD_)
      : T(T_), NH(NH_), NKV(NKV_), R(NH_ / NKV_), HD(HD_), Tp(round_up(T_, kTile)),
        Dp(round_up(HD_, kVec)), ntiles(round_up(T_, kTile) / kTile),
        tok(static_cast<size_t>(NH_ + 2 * NKV_) * HD_) {}
  size_t head_elems() const { return static_cast<size_t>(Tp) * Dp; }
  // offset of query head h's q, and of group g's k and v, within a token
  size_t q_col(int h) const { return (static_cast<size_t>(h / R) * (R + 2) + h % R) * HD; }
  size_t k_col(int g) const { return (static_cast<size_t>(g) * (R + 2) + R) * HD; }
  size_t v_col(int g) const { return k_col(g) + HD; }
  // element (b, t = 0, col) of qkv
  size_t at(int b, size_t col) const { return static_cast<size_t>(b) * T * tok + col; }
};

// Copies HD floats per token, from column col of qkv, sequence b, into dst [Tp, Dp], times s.
// The reads are 4HD-byte pieces at a stride of (NH + 2 NKV) HD floats.
void gather(float* dst, const float* qkv, int b, size_t col, float s, const HeadDims& d) {
  gather_rows(dst, qkv + d.at(b, col), d.tok, s, d.T, d.HD, d.Dp);
}

}  // namespace

namespace {

// One online-softmax step on a tile st[k][q] of scores S^T (keys x queries), in place: st
// becomes P^T = exp(S^T - m_new) (0 above the diagonal), and each query's running max m,
// running sum l and output row o[q, :] (rescaled by exp(m_old - m_new)) are updated.
// Queries run along the rows, so the max and the sum are vertical (vector) operations.
template <bool kDiag>
void online_softmax_tile(float* st, float* m, float* l, float* o, int Dp) {
  alignas(64) float mnew[kTile], lsum[kTile];
#if defined(__AVX512F__)
  static_assert(kTile == 4 * kVec);
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  __m512i qidx[4];
  __m512 mx[4], sum[4];
  for (int v = 0; v < 4; ++v) {
    qidx[v] = _mm512_add_epi32(lane, _mm512_set1_epi32(v * kVec));
    mx[v] = _mm512_loadu_ps(m + v * kVec);
    sum[v] = _mm512_setzero_ps();
  }
  for (int k = 0; k < kTile; ++k) {
    const float* row = st + k * kTile;
    for (int v = 0; v < 4; ++v) {
      const __m512 x = _mm512_loadu_ps(row + v * kVec);
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
    const float* row = st + k * kTile;
    for (int q = 0; q < kTile; ++q) {
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

// P^T = exp(S^T - lse) in place (0 above the diagonal); st[k][q], L[q] = lse of query q.
template <bool kDiag>
void probs_tile(float* st, const float* L) {
#if defined(__AVX512F__)
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  __m512 lv[4];
  __m512i qidx[4];
  for (int v = 0; v < 4; ++v) {
    lv[v] = _mm512_loadu_ps(L + v * kVec);
    qidx[v] = _mm512_add_epi32(lane, _mm512_set1_epi32(v * kVec));
  }
  for (int k = 0; k < kTile; ++k) {
    float* row = st + k * kTile;
    for (int v = 0; v < 4; ++v) {
      __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(row + v * kVec), lv[v]));
      if (kDiag) p = _mm512_maskz_mov_ps(_mm512_cmpge_epi32_mask(qidx[v], _mm512_set1_epi32(k)), p);
      _mm512_storeu_ps(row + v * kVec, p);
    }
  }
#else
  for (int k = 0; k < kTile; ++k) {
    float* row = st + k * kTile;
    for (int q = 0; q < kTile; ++q) row[q] = (kDiag && q < k) ? 0.0f : exp_scalar(row[q] - L[q]);
  }
#endif
}

// dS^T = P^T * (dP^T - D) in place on dpt (0 above the diagonal); D[q] = rowsum(dO * O).
template <bool kDiag>
void dscores_tile(float* dpt, const float* pt, const float* D) {
  for (int k = 0; k < kTile; ++k) {
    float* row = dpt + k * kTile;
    const float* prow = pt + k * kTile;
#pragma omp simd
    for (int q = 0; q < kTile; ++q) row[q] = (kDiag && q < k) ? 0.0f : prow[q] * (row[q] - D[q]);
  }
}

}  // namespace

namespace {

void check_groups(int NH, int NKV) {
  if (NKV <= 0 || NH % NKV != 0)
    throw std::invalid_argument("attention: NH = " + std::to_string(NH) +
                                " query heads are not a multiple of NKV = " + std::to_string(NKV) +
                                " key/value heads");
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int NKV,
                       int HD) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  check_groups(NH, NKV);
  const HeadDims d(T, NH, NKV, HD);
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const int R = d.R;
  const int nunits = B * NKV;  // (batch, group) pairs
  const int Dp = d.Dp;
  const size_t tile_elems = static_cast<size_t>(kTile) * Dp;
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
    float* const o = ws.take(tile_elems);
    alignas(64) float m[kTile], l[kTile];

#pragma omp for schedule(static)
    for (int bg = 0; bg < nunits; ++bg) {
      const int b = bg / NKV, g = bg % NKV;
      for (int r = 0; r < R; ++r) {
        const int h = g * R + r;
        const size_t bh = static_cast<size_t>(b) * NH + h;
        gather(tmp, qkv, b, d.q_col(h), scale, d);
        transpose_tiles(qt, tmp, d.Tp, d.Dp);
        if (r == 0) {  // the group's K and V, once for its R heads
          gather(kk, qkv, b, d.k_col(g), 1.0f, d);
          gather(vv, qkv, b, d.v_col(g), 1.0f, d);
        }

        // prefetch, spread over the products: the next head's q (and the next group's k, v
        // after the group's last head) and this head's output
        PrefetchQueue pq;
        if (r + 1 < R) {
          pq.add(RowPrefetcher(qkv + d.at(b, d.q_col(h + 1)), tok_bytes, head_bytes, T, false));
        } else if (bg + 1 < nunits) {
          const int b1 = (bg + 1) / NKV, g1 = (bg + 1) % NKV;
          for (size_t col : {d.q_col(g1 * R), d.k_col(g1), d.v_col(g1)})
            pq.add(RowPrefetcher(qkv + d.at(b1, col), tok_bytes, head_bytes, T, false));
        }
        pq.add(RowPrefetcher(out + (static_cast<size_t>(b) * T * NH + h) * HD,
                             static_cast<size_t>(NH) * HD * sizeof(float), head_bytes, T, true));
        pq.plan(d.ntiles * (d.ntiles + 1) / 2 * 2 * (kTile / kMR));

        for (int qi = 0; qi < d.ntiles; ++qi) {
          const int i0 = qi * kTile;
          const float* qti = qt + qi * tile_elems;
          std::fill(o, o + tile_elems, 0.0f);
          std::fill(m, m + kTile, -kInf);
          std::fill(l, l + kTile, 0.0f);
          for (int kj = 0; kj <= qi; ++kj) {
            const bool diag = kj == qi;
            // S^T = K_j Qs_i^T  [keys x queries]
            tile_gemm(kTile, kTile, Dp, kk + kj * tile_elems, Dp, 1, qti, kTile, s, kTile,
                      false, diag ? Tri::kColsFrom : Tri::kNone, pq);
            if (diag)
              online_softmax_tile<true>(s, m, l, o, Dp);
            else
              online_softmax_tile<false>(s, m, l, o, Dp);
            // O_i += P V_j, with P(q, k) = s[k][q]
            tile_gemm(kTile, Dp, kTile, s, 1, kTile, vv + kj * tile_elems, Dp, o, Dp, true,
                      diag ? Tri::kKUpper : Tri::kNone, pq);
          }
          // write out the real rows
          const int nrows = std::min(kTile, T - i0);
          for (int rr = 0; rr < nrows; ++rr) {
            const int t = i0 + rr;
            const float inv = 1.0f / l[rr];
            const float* orow = o + static_cast<size_t>(rr) * Dp;
            float* dst = out + ((static_cast<size_t>(b) * T + t) * NH + h) * HD;
#pragma omp simd
            for (int c = 0; c < HD; ++c) dst[c] = orow[c] * inv;
            lse[bh * T + t] = m[rr] + std::log(l[rr]);
          }
        }
      }
    }
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int NH, int NKV, int HD) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  check_groups(NH, NKV);
  const HeadDims d(T, NH, NKV, HD);
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const int R = d.R;
  const int nunits = B * NKV;  // (batch, group) pairs
  const int Dp = d.Dp;
  const size_t tile_elems = static_cast<size_t>(kTile) * Dp;
  const size_t tok_stride = static_cast<size_t>(NH) * HD;  // of out and dout
  const size_t tok_bytes = d.tok * sizeof(float);          // of qkv and dqkv
  const size_t head_bytes = static_cast<size_t>(HD) * sizeof(float);

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

#pragma omp for schedule(static)
    for (int bg = 0; bg < nunits; ++bg) {
      const int b = bg / NKV, g = bg % NKV;
      for (int r = 0; r < R; ++r) {
        const int h = g * R + r;
        const size_t bh = static_cast<size_t>(b) * NH + h;
        const bool last = r + 1 == R;
        gather(qs, qkv, b, d.q_col(h), scale, d);
        transpose_tiles(qt, qs, d.Tp, d.Dp);
        if (r == 0) {  // the group's K and V, once for its R heads
          gather(kk, qkv, b, d.k_col(g), 1.0f, d);
          gather(vv, qkv, b, d.v_col(g), 1.0f, d);
        }
        // dO (padded, and transposed) and D = rowsum(dO * O); lse of the head
        for (int t = 0; t < T; ++t) {
          const size_t off = (static_cast<size_t>(b) * T + t) * tok_stride + static_cast<size_t>(h) * HD;
          const float* gr = dout + off;
          const float* orow = out + off;
          if (t + 6 < T)
            for (int i = 0; i < HD; i += kVec) {
              __builtin_prefetch(gr + 6 * tok_stride + i);
              __builtin_prefetch(orow + 6 * tok_stride + i);
            }
          float* dst = dob + static_cast<size_t>(t) * Dp;
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int c = 0; c < HD; ++c) {
            dst[c] = gr[c];
            acc += gr[c] * orow[c];
          }
          dvec[t] = acc;
          lvec[t] = lse[bh * T + t];
        }
        transpose_tiles(dot, dob, d.Tp, d.Dp);
        std::memset(dq, 0, d.head_elems() * sizeof(float));
        if (r == 0) {  // dK and dV of the group: sums over its query heads, in head order
          std::memset(dk, 0, d.head_elems() * sizeof(float));
          std::memset(dv, 0, d.head_elems() * sizeof(float));
        }

        // prefetch, spread over the products: the next head's q, dout and out (and the next
        // group's k and v after the group's last head), and this head's output rows (after the
        // last head, its dq and the group's dk and dv are adjacent: one 3 HD row)
        PrefetchQueue pq;
        int h1 = -1, b1 = b;
        if (!last) {
          h1 = h + 1;
          pq.add(RowPrefetcher(qkv + d.at(b, d.q_col(h1)), tok_bytes, head_bytes, T, false));
        } else if (bg + 1 < nunits) {
          const int g1 = (bg + 1) % NKV;
          b1 = (bg + 1) / NKV;
          h1 = g1 * R;
          for (size_t col : {d.q_col(h1), d.k_col(g1), d.v_col(g1)})
            pq.add(RowPrefetcher(qkv + d.at(b1, col), tok_bytes, head_bytes, T, false));
        }
        if (h1 >= 0) {
          const size_t ooff = (static_cast<size_t>(b1) * T * NH + h1) * HD;
          pq.add(RowPrefetcher(dout + ooff, tok_stride * sizeof(float), head_bytes, T, false));
          pq.add(RowPrefetcher(out + ooff, tok_stride * sizeof(float), head_bytes, T, false));
        }
        pq.add(RowPrefetcher(dqkv + d.at(b, d.q_col(h)), tok_bytes, (last ? 3 : 1) * head_bytes,
                             T, true));
        pq.plan(d.ntiles * (d.ntiles + 1) / 2 * 5 * (kTile / kMR));

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
            const float* kj_rows = kk + kj * tile_elems;
            // P^T = exp(K_j Qs_i^T - lse)   [keys x queries]
            tile_gemm(kTile, kTile, Dp, kj_rows, Dp, 1, qti, kTile, p, kTile, false,
                      diag ? Tri::kColsFrom : Tri::kNone, pq);
            if (diag) probs_tile<true>(p, Li); else probs_tile<false>(p, Li);
            // dV_j += P^T dO_i
            tile_gemm(kTile, Dp, kTile, p, kTile, 1, go, Dp, dv + kj * tile_elems, Dp, true,
                      diag ? Tri::kKLower : Tri::kNone, pq);
            // dP^T = V_j dO_i^T
            tile_gemm(kTile, kTile, Dp, vv + kj * tile_elems, Dp, 1, goti, kTile, ds, kTile,
                      false, diag ? Tri::kColsFrom : Tri::kNone, pq);
            // dS^T = P^T * (dP^T - D)
            if (diag) dscores_tile<true>(ds, p, Di); else dscores_tile<false>(ds, p, Di);
            // dQ_i += dS K_j, with dS(q, k) = ds[k][q]
            tile_gemm(kTile, Dp, kTile, ds, 1, kTile, kj_rows, Dp, dqi, Dp, true,
                      diag ? Tri::kKUpper : Tri::kNone, pq);
            // dK_j += dS^T Qs_i
            tile_gemm(kTile, Dp, kTile, ds, kTile, 1, q, Dp, dk + kj * tile_elems, Dp, true,
                      diag ? Tri::kKLower : Tri::kNone, pq);
          }
        }
        // scatter (overwrite) into dqkv: this head's dq; after the group's last head, whose q
        // sits right before the group's k and v, dq, dk and dv together
        for (int t = 0; t < T; ++t) {
          float* dst = dqkv + d.at(b, d.q_col(h)) + static_cast<size_t>(t) * d.tok;
          const float* sq = dq + static_cast<size_t>(t) * Dp;
          if (last) {
            const float* sk = dk + static_cast<size_t>(t) * Dp;
            const float* sv = dv + static_cast<size_t>(t) * Dp;
#pragma omp simd
            for (int c = 0; c < HD; ++c) {
              dst[c] = sq[c] * scale;
              dst[HD + c] = sk[c];
              dst[2 * HD + c] = sv[c];
            }
          } else {
#pragma omp simd
            for (int c = 0; c < HD; ++c) dst[c] = sq[c] * scale;
          }
        }
      }
    }
  }
}

}  // namespace lossytp::cpu
