// Causal multi-head self-attention, fused, flash-attention style (Dao et al. 2022).
//
// Work is split over (batch, head) pairs with OpenMP; one thread does all of a head, so the
// result does not depend on the thread count. For a head, q/k/v are first gathered from the
// interleaved [B, T, NH, 3, HD] layout into contiguous per-head buffers, padded with zeros to
// Tp = T rounded up to the tile (64) and Dp = HD rounded up to 16 floats (one AVX-512 vector):
//   Qs  [Tp, Dp]          q * 1/sqrt(HD) (the softmax scale folded in once)
//   Kt  [Tp/64][Dp][64]   k transposed, one contiguous block per key tile
//   V   [Tp, Dp]
// Zero padding is harmless: padded keys lie above the causal diagonal of every real query, and
// padded queries are computed but never written out (their dO is zero in the backward).
//
// Forward, for each query tile i and key tile j <= i:
//   S = Qs_i Kt_j; online softmax over the key tiles (running max m, running sum l, the output
//   accumulator rescaled by exp(m_old - m_new)); O_i += P V_j; finally O_i /= l,
//   lse = m + log l.
// Backward, with D = rowsum(dO * O) and P recomputed from lse:
//   dV_j += P^T dO_i; dP = dO_i V_j^T; dS = P * (dP - D); dQ_i += dS K_j; dK_j += dS^T Qs_i
//   (dQ is scaled by 1/sqrt(HD) at the end; dK needs no scale since Qs already has it).
//
// All the tile products are C (+)= A B with B row-major and contiguous: A is read one element
// at a time (broadcast), so A^T costs nothing. They run on one register-blocked micro-kernel
// (4 rows x up to 64 columns = 16 AVX-512 accumulators). On diagonal tiles the products skip
// the blocks above the diagonal, so the causal half costs about half.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
// gcc 12 warns about the _mm512_undefined_ps() inside the shuffle intrinsics once they are
// inlined (a known false positive of -Wmaybe-uninitialized).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace lossytp::cpu {

namespace {

constexpr int kTile = 64;  // queries per query tile = keys per key tile
constexpr int kMR = 4;     // rows per micro-kernel call
constexpr int kVec = 16;   // floats per vector (one zmm)

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// exp(x) in float, Cephes-style: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r,
// 2^n by exponent bits. Error ~2 ulp for normal results; exp(x) = 0 below -87.3 (and for
// -inf); the input is clamped at 88.376 (no inf). Plain C++ so that gcc vectorises it in
// `omp simd` loops. (Same code as in gelu.cpp and cross_entropy.cpp: kernels/cpu has no
// shared private header.)
inline float fast_expf(float x) {
  x = std::min(x, 88.3762626f);  // the largest x with round(x log2 e) <= 127
  const bool underflow = x < -87.33f;
  x = std::max(x, -87.33f);
  const float t = x * 1.44269504088896341f + 12582912.0f;  // round(x log2 e) + 1.5 * 2^23
  const float n = t - 12582912.0f;
  const int32_t ni = std::bit_cast<int32_t>(t) - 0x4B400000;
  float r = x - n * 0.693359375f;  // Cody-Waite: ln2 split in a short hi part and a lo part
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const float scale = std::bit_cast<float>((ni + 127) << 23);
  return underflow ? 0.0f : p * scale;
}

// 64-byte aligned, zero-initialised float buffer.
class Buffer {
 public:
  explicit Buffer(size_t n) {
    const size_t bytes = std::max<size_t>(64, (n * sizeof(float) + 63) / 64 * 64);
    p_ = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (p_ == nullptr) std::abort();
    std::memset(p_, 0, bytes);
  }
  ~Buffer() { std::free(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* get() const { return p_; }

 private:
  float* p_;
};

// C[kMR, 16*NV] (+)= sum_{k in [kb, ke)} A(r, k) * B[k, :], A(r, k) = A[r*ars + k*acs].
template <int NV>
inline void micro_kernel(int kb, int ke, const float* A, ptrdiff_t ars, ptrdiff_t acs,
                         const float* B, ptrdiff_t ldb, float* C, ptrdiff_t ldc, bool accumulate) {
#if defined(__AVX512F__)
  __m512 c[kMR][NV];
  for (int r = 0; r < kMR; ++r)
    for (int v = 0; v < NV; ++v)
      c[r][v] = accumulate ? _mm512_loadu_ps(C + r * ldc + v * kVec) : _mm512_setzero_ps();
  const float* a0 = A;
  const float* a1 = A + ars;
  const float* a2 = A + 2 * ars;
  const float* a3 = A + 3 * ars;
  for (int k = kb; k < ke; ++k) {
    const float* b = B + k * ldb;
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) {
      bv[v] = _mm512_loadu_ps(b + v * kVec);
      // Keep B in registers: without this gcc folds the load into every FMA (4x the loads,
      // and the kernel becomes load-bound: ~90 instead of ~115 GFLOP/s on Zen 4).
      __asm__("" : "+v"(bv[v]));
    }
    const ptrdiff_t ka = k * acs;
    const __m512 x0 = _mm512_set1_ps(a0[ka]);
    for (int v = 0; v < NV; ++v) c[0][v] = _mm512_fmadd_ps(x0, bv[v], c[0][v]);
    const __m512 x1 = _mm512_set1_ps(a1[ka]);
    for (int v = 0; v < NV; ++v) c[1][v] = _mm512_fmadd_ps(x1, bv[v], c[1][v]);
    const __m512 x2 = _mm512_set1_ps(a2[ka]);
    for (int v = 0; v < NV; ++v) c[2][v] = _mm512_fmadd_ps(x2, bv[v], c[2][v]);
    const __m512 x3 = _mm512_set1_ps(a3[ka]);
    for (int v = 0; v < NV; ++v) c[3][v] = _mm512_fmadd_ps(x3, bv[v], c[3][v]);
  }
  for (int r = 0; r < kMR; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + r * ldc + v * kVec, c[r][v]);
#else
  constexpr int NC = NV * kVec;
  float c[kMR][NC];
  for (int r = 0; r < kMR; ++r)
    for (int j = 0; j < NC; ++j) c[r][j] = accumulate ? C[r * ldc + j] : 0.0f;
  for (int k = kb; k < ke; ++k) {
    const float* b = B + k * ldb;
    for (int r = 0; r < kMR; ++r) {
      const float a = A[r * ars + k * acs];
#pragma omp simd
      for (int j = 0; j < NC; ++j) c[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < kMR; ++r)
    for (int j = 0; j < NC; ++j) C[r * ldc + j] = c[r][j];
#endif
}

// A strided set of rows in memory (one head's slice of an interleaved activation: `rows` rows
// of `row_bytes` bytes, `stride` bytes apart) whose cache lines get prefetched a few at a time.
class RowPrefetcher {
 public:
  RowPrefetcher() = default;
  RowPrefetcher(const void* base, size_t stride, size_t row_bytes, int rows, bool write)
      : base_(static_cast<const char*>(base)), stride_(stride), rows_(rows), write_(write) {
    const bool aligned = reinterpret_cast<uintptr_t>(base) % 64 == 0 && stride % 64 == 0;
    lines_per_row_ = static_cast<int>((row_bytes + 63) / 64) + (aligned ? 0 : 1);
  }
  int total_lines() const { return lines_per_row_ * rows_; }
  // Prefetches up to n more lines; returns how many it did.
  int issue(int n) {
    int done = 0;
    for (; done < n && pos_ < total_lines(); ++done, ++pos_) {
      const char* p = base_ + (pos_ / lines_per_row_) * stride_ + (pos_ % lines_per_row_) * 64;
      if (write_) __builtin_prefetch(p, 1, 2); else __builtin_prefetch(p, 0, 2);
    }
    return done;
  }

 private:
  const char* base_ = nullptr;
  size_t stride_ = 0;
  int lines_per_row_ = 0, rows_ = 0, pos_ = 0;
  bool write_ = false;
};

// Software prefetches spread evenly over a head's arithmetic: the next head's inputs and this
// head's outputs live in big interleaved arrays (a new 4 KiB page every token or two, which
// the hardware prefetchers do not follow), and without this the gathers and scatters stall on
// DRAM. tile_gemm issues a few after every row block.
class PrefetchQueue {
 public:
  void add(const RowPrefetcher& r) {
    if (n_ < kMax) pf_[n_++] = r;
  }
  // Sets the number of lines per call of step() so that all lines go in `steps` calls.
  void plan(int steps) {
    int total = 0;
    for (int i = 0; i < n_; ++i) total += pf_[i].total_lines();
    per_step_ = steps > 0 ? (total + steps - 1) / steps : total;
  }
  void step() {
    for (int n = per_step_; n > 0 && cur_ < n_;) {
      n -= pf_[cur_].issue(n);
      if (n > 0) ++cur_;
    }
  }

 private:
  static constexpr int kMax = 6;
  RowPrefetcher pf_[kMax];
  int n_ = 0, cur_ = 0, per_step_ = 0;
};

// Which part of a diagonal (causal) tile a product needs. On a diagonal tile the local query
// index q and key index k share the origin, and the pair is valid when k <= q.
enum class Tri {
  kNone,      // full product
  kColsFrom,  // C rows = keys, C cols = queries: only columns q >= row, from the vector that
              // holds column `row` on (S^T and dP^T); the columns skipped are left unwritten
  kKUpper,    // C rows = queries, k = keys: only k <= row (P V and dS K)
  kKLower,    // C rows = keys, k = queries: only k >= row (P^T dO and dS^T Q)
};

// C[M, N] (+)= A(M x K) B[K, N] with M a multiple of kMR and N a multiple of kVec.
void tile_gemm(int M, int N, int K, const float* A, ptrdiff_t ars, ptrdiff_t acs,
               const float* B, ptrdiff_t ldb, float* C, ptrdiff_t ldc, bool accumulate,
               Tri tri, PrefetchQueue& pq) {
  for (int r0 = 0; r0 < M; r0 += kMR) {
    int kb = 0, ke = K, c_begin = 0;
    if (tri == Tri::kColsFrom) c_begin = r0 / kVec * kVec;
    if (tri == Tri::kKUpper) ke = std::min(K, r0 + kMR);
    if (tri == Tri::kKLower) kb = r0;
    const float* a = A + r0 * ars;
    float* c = C + r0 * ldc;
    for (int c0 = c_begin; c0 < N; c0 += 4 * kVec) {
      switch (std::min(4, (N - c0) / kVec)) {
        case 4: micro_kernel<4>(kb, ke, a, ars, acs, B + c0, ldb, c + c0, ldc, accumulate); break;
        case 3: micro_kernel<3>(kb, ke, a, ars, acs, B + c0, ldb, c + c0, ldc, accumulate); break;
        case 2: micro_kernel<2>(kb, ke, a, ars, acs, B + c0, ldb, c + c0, ldc, accumulate); break;
        default: micro_kernel<1>(kb, ke, a, ars, acs, B + c0, ldb, c + c0, ldc, accumulate); break;
      }
    }
    pq.step();
  }
}

struct HeadDims {
  int T, NH, HD, Tp, Dp, ntiles;
  HeadDims(int T_, int NH_, int HD_)
      : T(T_), NH(NH_), HD(HD_), Tp(round_up(T_, kTile)), Dp(round_up(HD_, kVec)),
        ntiles(round_up(T_, kTile) / kTile) {}
  size_t head_elems() const { return static_cast<size_t>(Tp) * Dp; }
};

// Copies one head's vectors (which: 0 = q, 1 = k, 2 = v) from qkv into dst [Tp, Dp], times s.
// Only real entries are written (padding stays zero). The reads are 4HD-byte pieces at a
// stride of 3 NH HD floats, so they are prefetched a few tokens ahead.
void gather(float* dst, const float* qkv, int b, int h, int which, float s, const HeadDims& d) {
  constexpr int kAhead = 6;
  const size_t tok_stride = static_cast<size_t>(d.NH) * 3 * d.HD;
  const float* src0 = qkv + static_cast<size_t>(b) * d.T * tok_stride +
                      (static_cast<size_t>(h) * 3 + which) * d.HD;
  for (int t = 0; t < d.T; ++t) {
    const float* src = src0 + t * tok_stride;
    if (t + kAhead < d.T)
      for (int i = 0; i < d.HD; i += kVec) __builtin_prefetch(src + kAhead * tok_stride + i);
    float* o = dst + static_cast<size_t>(t) * d.Dp;
#pragma omp simd
    for (int i = 0; i < d.HD; ++i) o[i] = src[i] * s;
  }
}

// out[16 x 16] (row stride ldo) = in[16 x 16]^T (row stride ldi).
inline void transpose16(const float* in, ptrdiff_t ldi, float* out, ptrdiff_t ldo) {
#if defined(__AVX512F__)
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(in + i * ldi);
  // within 128-bit lanes: pairs of rows, then quads of rows
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), e = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));      // column 4l   of rows i..i+3
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));  // column 4l+1
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));  // column 4l+2
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));  // column 4l+3
  }
  // across lanes: 0x88 takes lanes (0, 2) of each operand, 0xdd lanes (1, 3)
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + 4 + j], 0x88);
      t[i + 4 + j] = _mm512_shuffle_f32x4(r[i + j], r[i + 4 + j], 0xdd);
    }
  for (int j = 0; j < 4; ++j) {
    _mm512_storeu_ps(out + j * ldo, _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88));
    _mm512_storeu_ps(out + (j + 8) * ldo, _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd));
    _mm512_storeu_ps(out + (j + 4) * ldo, _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88));
    _mm512_storeu_ps(out + (j + 12) * ldo, _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xdd));
  }
#else
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) out[j * ldo + i] = in[i * ldi + j];
#endif
}

// dst [Tp/64][Dp][64] = src [Tp, Dp] transposed one key tile at a time (Tp, Dp multiples of 16).
void transpose_tiles(float* dst, const float* src, const HeadDims& d) {
  for (int t0 = 0; t0 < d.Tp; t0 += kVec)
    for (int i0 = 0; i0 < d.Dp; i0 += kVec)
      transpose16(src + static_cast<size_t>(t0) * d.Dp + i0, d.Dp,
                  dst + static_cast<size_t>(t0 / kTile) * d.Dp * kTile +
                      static_cast<size_t>(i0) * kTile + t0 % kTile,
                  kTile);
}

}  // namespace

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// One online-softmax step on a tile st[k][q] of scores S^T (keys x queries), in place: st
// becomes P^T = exp(S^T - m_new) (0 above the diagonal), and each query's running max m,
// running sum l and output row o[q, :] (rescaled by exp(m_old - m_new)) are updated.
// Queries run along the rows, so the max and the sum are vertical (vector) operations.
template <bool kDiag>
void online_softmax_tile(float* st, float* m, float* l, float* o, int Dp) {
  alignas(64) float mnew[kTile], lsum[kTile];
  for (int q = 0; q < kTile; ++q) mnew[q] = m[q], lsum[q] = 0.0f;
  for (int k = 0; k < kTile; ++k) {
    const float* row = st + k * kTile;
#pragma omp simd
    for (int q = 0; q < kTile; ++q) {
      const float v = (kDiag && q < k) ? -kInf : row[q];
      mnew[q] = v > mnew[q] ? v : mnew[q];
    }
  }
  for (int k = 0; k < kTile; ++k) {
    float* row = st + k * kTile;
#pragma omp simd
    for (int q = 0; q < kTile; ++q) {
      const float p = (kDiag && q < k) ? 0.0f : fast_expf(row[q] - mnew[q]);
      row[q] = p;
      lsum[q] += p;
    }
  }
  for (int q = 0; q < kTile; ++q) {
    if (mnew[q] != m[q]) {
      const float corr = fast_expf(m[q] - mnew[q]);  // 0 on the first tile (m = -inf)
      l[q] *= corr;
      m[q] = mnew[q];
      float* orow = o + static_cast<size_t>(q) * Dp;
#pragma omp simd
      for (int c = 0; c < Dp; ++c) orow[c] *= corr;
    }
    l[q] += lsum[q];
  }
}

// P^T = exp(S^T - lse) in place (0 above the diagonal); st[k][q], L[q] = lse of query q.
template <bool kDiag>
void probs_tile(float* st, const float* L) {
  for (int k = 0; k < kTile; ++k) {
    float* row = st + k * kTile;
#pragma omp simd
    for (int q = 0; q < kTile; ++q) row[q] = (kDiag && q < k) ? 0.0f : fast_expf(row[q] - L[q]);
  }
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

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int HD) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const HeadDims d(T, NH, HD);
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const int nheads = B * NH;
  const int Dp = d.Dp;
  const size_t tile_elems = static_cast<size_t>(kTile) * Dp;

#pragma omp parallel
  {
    Buffer qt(d.head_elems()), kk(d.head_elems()), vv(d.head_elems()), tmp(d.head_elems());
    Buffer sbuf(kTile * kTile), oacc(tile_elems);
    alignas(64) float m[kTile], l[kTile];

#pragma omp for schedule(static)
    for (int bh = 0; bh < nheads; ++bh) {
      const int b = bh / NH, h = bh % NH;
      gather(tmp.get(), qkv, b, h, 0, scale, d);
      transpose_tiles(qt.get(), tmp.get(), d);
      gather(kk.get(), qkv, b, h, 1, 1.0f, d);
      gather(vv.get(), qkv, b, h, 2, 1.0f, d);

      // prefetch, spread over the products: the next head's q, k, v and this head's output
      PrefetchQueue pq;
      const size_t tok_bytes = static_cast<size_t>(NH) * 3 * HD * sizeof(float);
      if (bh + 1 < nheads) {
        const int b1 = (bh + 1) / NH, h1 = (bh + 1) % NH;
        for (int w = 0; w < 3; ++w)
          pq.add(RowPrefetcher(qkv + (static_cast<size_t>(b1) * T * NH * 3 + h1 * 3 + w) * HD,
                               tok_bytes, HD * sizeof(float), T, false));
      }
      pq.add(RowPrefetcher(out + (static_cast<size_t>(b) * T * NH + h) * HD,
                           static_cast<size_t>(NH) * HD * sizeof(float), HD * sizeof(float), T, true));
      pq.plan(d.ntiles * (d.ntiles + 1) / 2 * 2 * (kTile / kMR));

      float* o = oacc.get();
      float* s = sbuf.get();
      for (int qi = 0; qi < d.ntiles; ++qi) {
        const int i0 = qi * kTile;
        const float* qti = qt.get() + qi * tile_elems;
        std::fill(o, o + tile_elems, 0.0f);
        std::fill(m, m + kTile, -kInf);
        std::fill(l, l + kTile, 0.0f);
        for (int kj = 0; kj <= qi; ++kj) {
          const bool diag = kj == qi;
          // S^T = K_j Qs_i^T  [keys x queries]
          tile_gemm(kTile, kTile, Dp, kk.get() + kj * tile_elems, Dp, 1, qti, kTile, s, kTile,
                    false, diag ? Tri::kColsFrom : Tri::kNone, pq);
          if (diag)
            online_softmax_tile<true>(s, m, l, o, Dp);
          else
            online_softmax_tile<false>(s, m, l, o, Dp);
          // O_i += P V_j, with P(q, k) = s[k][q]
          tile_gemm(kTile, Dp, kTile, s, 1, kTile, vv.get() + kj * tile_elems, Dp, o, Dp, true,
                    diag ? Tri::kKUpper : Tri::kNone, pq);
        }
        // write out the real rows
        const int nrows = std::min(kTile, T - i0);
        for (int r = 0; r < nrows; ++r) {
          const int t = i0 + r;
          const float inv = 1.0f / l[r];
          const float* orow = o + static_cast<size_t>(r) * Dp;
          float* dst = out + ((static_cast<size_t>(b) * T + t) * NH + h) * HD;
#pragma omp simd
          for (int c = 0; c < HD; ++c) dst[c] = orow[c] * inv;
          lse[static_cast<size_t>(bh) * T + t] = m[r] + std::log(l[r]);
        }
      }
    }
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int NH, int HD) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const HeadDims d(T, NH, HD);
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const int nheads = B * NH;
  const int Dp = d.Dp;
  const size_t tile_elems = static_cast<size_t>(kTile) * Dp;
  const size_t tok_stride = static_cast<size_t>(NH) * HD;

#pragma omp parallel
  {
    Buffer qs(d.head_elems()), qt(d.head_elems()), kk(d.head_elems()), vv(d.head_elems());
    Buffer dob(d.head_elems()), dot(d.head_elems());
    Buffer dq(d.head_elems()), dk(d.head_elems()), dv(d.head_elems());
    Buffer dvec(d.Tp), lvec(d.Tp), pbuf(kTile * kTile), dsbuf(kTile * kTile);

#pragma omp for schedule(static)
    for (int bh = 0; bh < nheads; ++bh) {
      const int b = bh / NH, h = bh % NH;
      gather(qs.get(), qkv, b, h, 0, scale, d);
      transpose_tiles(qt.get(), qs.get(), d);
      gather(kk.get(), qkv, b, h, 1, 1.0f, d);
      gather(vv.get(), qkv, b, h, 2, 1.0f, d);
      // dO (padded, and transposed) and D = rowsum(dO * O); lse of the head
      for (int t = 0; t < T; ++t) {
        const size_t off = (static_cast<size_t>(b) * T + t) * tok_stride + static_cast<size_t>(h) * HD;
        const float* g = dout + off;
        const float* o = out + off;
        if (t + 6 < T)
          for (int i = 0; i < HD; i += kVec) {
            __builtin_prefetch(g + 6 * tok_stride + i);
            __builtin_prefetch(o + 6 * tok_stride + i);
          }
        float* dst = dob.get() + static_cast<size_t>(t) * Dp;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int c = 0; c < HD; ++c) {
          dst[c] = g[c];
          acc += g[c] * o[c];
        }
        dvec.get()[t] = acc;
        lvec.get()[t] = lse[static_cast<size_t>(bh) * T + t];
      }
      transpose_tiles(dot.get(), dob.get(), d);
      std::memset(dq.get(), 0, d.head_elems() * sizeof(float));
      std::memset(dk.get(), 0, d.head_elems() * sizeof(float));
      std::memset(dv.get(), 0, d.head_elems() * sizeof(float));

      // prefetch, spread over the products: the next head's q, k, v, dout, out and this
      // head's output rows (the q, k and v gradients of a token are adjacent: one 3 HD row)
      PrefetchQueue pq;
      const size_t tok_bytes = static_cast<size_t>(NH) * 3 * HD * sizeof(float);
      if (bh + 1 < nheads) {
        const int b1 = (bh + 1) / NH, h1 = (bh + 1) % NH;
        for (int w = 0; w < 3; ++w)
          pq.add(RowPrefetcher(qkv + (static_cast<size_t>(b1) * T * NH * 3 + h1 * 3 + w) * HD,
                               tok_bytes, HD * sizeof(float), T, false));
        const size_t ooff = (static_cast<size_t>(b1) * T * NH + h1) * HD;
        pq.add(RowPrefetcher(dout + ooff, tok_stride * sizeof(float), HD * sizeof(float), T, false));
        pq.add(RowPrefetcher(out + ooff, tok_stride * sizeof(float), HD * sizeof(float), T, false));
      }
      pq.add(RowPrefetcher(dqkv + (static_cast<size_t>(b) * T * NH + h) * 3 * HD, tok_bytes,
                           3 * HD * sizeof(float), T, true));
      pq.plan(d.ntiles * (d.ntiles + 1) / 2 * 5 * (kTile / kMR));

      float* p = pbuf.get();
      float* ds = dsbuf.get();
      for (int qi = 0; qi < d.ntiles; ++qi) {
        const int i0 = qi * kTile;
        const float* q = qs.get() + qi * tile_elems;
        const float* qti = qt.get() + qi * tile_elems;
        const float* go = dob.get() + qi * tile_elems;
        const float* goti = dot.get() + qi * tile_elems;
        const float* Li = lvec.get() + i0;
        const float* Di = dvec.get() + i0;
        float* dqi = dq.get() + qi * tile_elems;
        for (int kj = 0; kj <= qi; ++kj) {
          const bool diag = kj == qi;
          const float* kj_rows = kk.get() + kj * tile_elems;
          // P^T = exp(K_j Qs_i^T - lse)   [keys x queries]
          tile_gemm(kTile, kTile, Dp, kj_rows, Dp, 1, qti, kTile, p, kTile, false,
                    diag ? Tri::kColsFrom : Tri::kNone, pq);
          if (diag) probs_tile<true>(p, Li); else probs_tile<false>(p, Li);
          // dV_j += P^T dO_i
          tile_gemm(kTile, Dp, kTile, p, kTile, 1, go, Dp, dv.get() + kj * tile_elems, Dp, true,
                    diag ? Tri::kKLower : Tri::kNone, pq);
          // dP^T = V_j dO_i^T
          tile_gemm(kTile, kTile, Dp, vv.get() + kj * tile_elems, Dp, 1, goti, kTile, ds, kTile,
                    false, diag ? Tri::kColsFrom : Tri::kNone, pq);
          // dS^T = P^T * (dP^T - D)
          if (diag) dscores_tile<true>(ds, p, Di); else dscores_tile<false>(ds, p, Di);
          // dQ_i += dS K_j, with dS(q, k) = ds[k][q]
          tile_gemm(kTile, Dp, kTile, ds, 1, kTile, kj_rows, Dp, dqi, Dp, true,
                    diag ? Tri::kKUpper : Tri::kNone, pq);
          // dK_j += dS^T Qs_i
          tile_gemm(kTile, Dp, kTile, ds, kTile, 1, q, Dp, dk.get() + kj * tile_elems, Dp, true,
                    diag ? Tri::kKLower : Tri::kNone, pq);
        }
      }
      // scatter (overwrite) into dqkv [B, T, NH, 3, HD]
      for (int t = 0; t < T; ++t) {
        float* dst = dqkv + ((static_cast<size_t>(b) * T + t) * NH + h) * 3 * HD;
        const float* sq = dq.get() + static_cast<size_t>(t) * Dp;
        const float* sk = dk.get() + static_cast<size_t>(t) * Dp;
        const float* sv = dv.get() + static_cast<size_t>(t) * Dp;
#pragma omp simd
        for (int c = 0; c < HD; ++c) {
          dst[c] = sq[c] * scale;
          dst[HD + c] = sk[c];
          dst[2 * HD + c] = sv[c];
        }
      }
    }
  }
}

}  // namespace lossytp::cpu
