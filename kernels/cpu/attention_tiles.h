// Building blocks of the fused (flash-attention style) CPU attention kernels, shared by
// kernels/cpu/attention.cpp (softmax attention, MHA / GQA) and kernels/cpu/semigroup_attention.cpp
// (softmax with a distance bias, the semigroup generator step). Private to kernels/cpu.
// A head's vectors are gathered into contiguous zero-padded buffers [Tp, Dp] (Tp = T rounded up
// to kTile tokens, Dp = HD rounded up to kVec floats) kept in a per-thread Workspace; queries and
// dO are also transposed tile by tile ([Tp/64][Dp][64], transpose_tiles); every tile product
// C (+)= A B runs on one 4 x 64 register-blocked AVX-512 micro-kernel (tile_gemm, which skips
// the blocks above the diagonal of a causal tile), and software prefetches for the strided
// interleaved inputs/outputs are spread over the arithmetic (PrefetchQueue); update_running is
// the end of an online-softmax step (running max, sum and output rescale). Builds without
// AVX-512 get plain loops with the same results up to rounding.
// attention_blocks.cpp (context-parallel blocks) has a different, generic micro-kernel.
#pragma once
#include "kernels/cpu/simd_exp.h"

#include <algorithm>
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

namespace lossytp::cpu::tiles {

inline constexpr int kTile = 64;  // queries per query tile = keys per key tile
inline constexpr int kMR = 4;     // rows per micro-kernel call
inline constexpr int kVec = 16;   // floats per vector (one zmm)

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

inline constexpr float kInf = std::numeric_limits<float>::infinity();

// Per-thread scratch memory, kept between calls: allocating and zeroing the per-head buffers
// (~0.6 MB for a 256-token head) at every call costs page faults that show at small B * NH.
// The buffers rely on zero padding (rows >= T, columns >= HD), which the code never writes, so
// the memory is zeroed whenever it is (re)allocated or the padded layout (T, HD) changes.
class Workspace {
 public:
  ~Workspace() { std::free(p_); }
  // n floats, 64-byte aligned, valid until the next call on this thread.
  float* get(size_t n, int T, int HD) {
    if (n > cap_) {
      std::free(p_);
      const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      p_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (p_ == nullptr) std::abort();
      cap_ = n;
      T_ = -1;
    }
    if (T != T_ || HD != HD_) {
      std::memset(p_, 0, cap_ * sizeof(float));
      T_ = T;
      HD_ = HD;
    }
    return p_;
  }

 private:
  float* p_ = nullptr;
  size_t cap_ = 0;
  int T_ = -1, HD_ = -1;
};

// Carves consecutive 64-byte aligned pieces out of a workspace.
class Carver {
 public:
  explicit Carver(float* base) : p_(base) {}
  float* take(size_t n) {
    float* r = p_;
    p_ += (n + kVec - 1) / kVec * kVec;
    return r;
  }

 private:
  float* p_;
};

inline size_t padded(size_t n) { return (n + kVec - 1) / kVec * kVec; }

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
    for (; done < n && row_ < rows_; ++done) {
      const char* p = base_ + row_ * stride_ + line_ * 64;
      if (write_) __builtin_prefetch(p, 1, 2); else __builtin_prefetch(p, 0, 2);
      if (++line_ == lines_per_row_) line_ = 0, ++row_;
    }
    return done;
  }

 private:
  const char* base_ = nullptr;
  size_t stride_ = 0;
  int lines_per_row_ = 0, rows_ = 0, row_ = 0, line_ = 0;
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
// Not inlined: inside the big attention loops gcc runs out of registers for the micro-kernel
// and spills an accumulator (~10% slower). static: internal linkage (one copy per including file,
// as when it was private to each), which lets gcc clone it for the constant arguments of its callers.
__attribute__((noinline)) static void tile_gemm(int M, int N, int K, const float* A, ptrdiff_t ars, ptrdiff_t acs,
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

// dst [Tp, Dp] = s * (T rows of HD floats at src, `stride` floats apart); only real entries are
// written (padding stays zero). The rows are HD-float pieces of a big interleaved activation,
// so they are prefetched a few tokens ahead.
inline void gather_rows(float* dst, const float* src, size_t stride, float s, int T, int HD,
                        int Dp) {
  constexpr int kAhead = 6;
  for (int t = 0; t < T; ++t) {
    const float* r = src + t * stride;
    if (t + kAhead < T)
      for (int i = 0; i < HD; i += kVec) __builtin_prefetch(r + kAhead * stride + i);
    float* o = dst + static_cast<size_t>(t) * Dp;
#pragma omp simd
    for (int i = 0; i < HD; ++i) o[i] = r[i] * s;
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
inline void transpose_tiles(float* dst, const float* src, int Tp, int Dp) {
  for (int t0 = 0; t0 < Tp; t0 += kVec)
    for (int i0 = 0; i0 < Dp; i0 += kVec)
      transpose16(src + static_cast<size_t>(t0) * Dp + i0, Dp,
                  dst + static_cast<size_t>(t0 / kTile) * Dp * kTile +
                      static_cast<size_t>(i0) * kTile + t0 % kTile,
                  kTile);
}

// The end of an online-softmax step over one tile of kTile queries: query q's new max mnew[q]
// and the sum lsum[q] of its exp(score - mnew[q]) over the tile update its running max m[q],
// running sum l[q] and output row o[q, :] (Dp floats), the old ones rescaled by
// exp(m_old - m_new).
inline void update_running(float* m, float* l, float* o, int Dp, const float* mnew,
                           const float* lsum) {
  for (int q = 0; q < kTile; ++q) {
    if (mnew[q] != m[q]) {
      const float corr = m[q] == -kInf ? 0.0f : simd::exp_scalar(m[q] - mnew[q]);
      l[q] *= corr;
      m[q] = mnew[q];
      float* orow = o + static_cast<size_t>(q) * Dp;
#pragma omp simd
      for (int c = 0; c < Dp; ++c) orow[c] *= corr;
    }
    l[q] += lsum[q];
  }
}

}  // namespace lossytp::cpu::tiles
