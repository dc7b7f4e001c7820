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

// max(init, x[0..n)). Written with explicit lanes: gcc does not vectorise a float max
// reduction without -ffast-math.
inline float row_max(const float* x, int n, float init) {
  float lane[kVec];
  for (int i = 0; i < kVec; ++i) lane[i] = init;
  int c = 0;
  for (; c + kVec <= n; c += kVec)
#pragma omp simd
    for (int i = 0; i < kVec; ++i) lane[i] = x[c + i] > lane[i] ? x[c + i] : lane[i];
  for (; c < n; ++c) lane[0] = x[c] > lane[0] ? x[c] : lane[0];
  float m = lane[0];
  for (int i = 1; i < kVec; ++i) m = lane[i] > m ? lane[i] : m;
  return m;
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

// Which part of a diagonal (causal) tile a product needs; row r of C is local query/key r.
enum class Tri {
  kNone,    // full product
  kCols,    // C rows = queries, C cols = keys: only columns <= row (S and dP)
  kKUpper,  // C rows = queries, k = keys: only k <= row (P V and dS K)
  kKLower,  // C rows = keys, k = queries: only k >= row (P^T dO and dS^T Q)
};

// C[M, N] (+)= A(M x K) B[K, N] with M a multiple of kMR and N a multiple of kVec.
// With Tri::kCols and accumulate == false, the columns skipped are left unwritten.
void tile_gemm(int M, int N, int K, const float* A, ptrdiff_t ars, ptrdiff_t acs,
               const float* B, ptrdiff_t ldb, float* C, ptrdiff_t ldc, bool accumulate,
               Tri tri) {
  for (int r0 = 0; r0 < M; r0 += kMR) {
    int kb = 0, ke = K, ncols = N;
    if (tri == Tri::kCols) ncols = std::min(N, round_up(r0 + kMR, kVec));
    if (tri == Tri::kKUpper) ke = std::min(K, r0 + kMR);
    if (tri == Tri::kKLower) kb = r0;
    const float* a = A + r0 * ars;
    float* c = C + r0 * ldc;
    for (int c0 = 0; c0 < ncols; c0 += 4 * kVec) {
      switch (std::min(4, (ncols - c0) / kVec)) {
        case 4: micro_kernel<4>(kb, ke, a, ars, acs, B + c0, ldb, c + c0, ldc, accumulate); break;
        case 3: micro_kernel<3>(kb, ke, a, ars, acs, B + c0, ldb, c + c0, ldc, accumulate); break;
        case 2: micro_kernel<2>(kb, ke, a, ars, acs, B + c0, ldb, c + c0, ldc, accumulate); break;
        default: micro_kernel<1>(kb, ke, a, ars, acs, B + c0, ldb, c + c0, ldc, accumulate); break;
      }
    }
  }
}

struct HeadDims {
  int T, NH, HD, Tp, Dp, ntiles;
  HeadDims(int T_, int NH_, int HD_)
      : T(T_), NH(NH_), HD(HD_), Tp(round_up(T_, kTile)), Dp(round_up(HD_, kVec)),
        ntiles(round_up(T_, kTile) / kTile) {}
  size_t head_elems() const { return static_cast<size_t>(Tp) * Dp; }
};

// Gathers one head. which: 0 = q, 1 = k, 2 = v. dst is [Tp, Dp] row-major (scaled by s), or,
// with transpose, [ntiles][Dp][kTile]. Only real entries are written (padding stays zero).
void gather(float* dst, const float* qkv, int b, int h, int which, float s, bool transpose,
            const HeadDims& d) {
  const size_t tok_stride = static_cast<size_t>(d.NH) * 3 * d.HD;
  const float* src0 = qkv + static_cast<size_t>(b) * d.T * tok_stride +
                      (static_cast<size_t>(h) * 3 + which) * d.HD;
  if (!transpose) {
    for (int t = 0; t < d.T; ++t) {
      const float* src = src0 + t * tok_stride;
      float* o = dst + static_cast<size_t>(t) * d.Dp;
#pragma omp simd
      for (int i = 0; i < d.HD; ++i) o[i] = src[i] * s;
    }
    return;
  }
  // Transpose one tile at a time, through a small block of 16 tokens x 16 dims so that both
  // the reads (along a token's vector) and the writes (along a tile row) are contiguous.
  for (int t0 = 0; t0 < d.T; t0 += kVec) {
    const int nt = std::min(kVec, d.T - t0);
    float* tile = dst + static_cast<size_t>(t0 / kTile) * d.Dp * kTile + t0 % kTile;
    for (int i0 = 0; i0 < d.HD; i0 += kVec) {
      const int ni = std::min(kVec, d.HD - i0);
      float blk[kVec][kVec];  // [token][dim]
      for (int t = 0; t < nt; ++t) {
        const float* src = src0 + (t0 + t) * tok_stride + i0;
        for (int i = 0; i < ni; ++i) blk[t][i] = src[i] * s;
      }
      for (int i = 0; i < ni; ++i) {
        float* o = tile + static_cast<size_t>(i0 + i) * kTile;
        for (int t = 0; t < nt; ++t) o[t] = blk[t][i];
      }
    }
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int NH, int HD) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  const HeadDims d(T, NH, HD);
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const int nheads = B * NH;
  const int Dp = d.Dp;

#pragma omp parallel
  {
    Buffer qs(d.head_elems()), kt(d.head_elems()), vv(d.head_elems());
    Buffer sbuf(kTile * kTile), oacc(static_cast<size_t>(kTile) * Dp);
    float m[kTile], l[kTile];

#pragma omp for schedule(static)
    for (int bh = 0; bh < nheads; ++bh) {
      const int b = bh / NH, h = bh % NH;
      gather(qs.get(), qkv, b, h, 0, scale, false, d);
      gather(kt.get(), qkv, b, h, 1, 1.0f, true, d);
      gather(vv.get(), qkv, b, h, 2, 1.0f, false, d);

      for (int qi = 0; qi < d.ntiles; ++qi) {
        const int i0 = qi * kTile;
        const float* q = qs.get() + static_cast<size_t>(i0) * Dp;
        float* o = oacc.get();
        float* s = sbuf.get();
        std::fill(o, o + static_cast<size_t>(kTile) * Dp, 0.0f);
        std::fill(m, m + kTile, -std::numeric_limits<float>::infinity());
        std::fill(l, l + kTile, 0.0f);

        for (int kj = 0; kj <= qi; ++kj) {
          const bool diag = kj == qi;
          // S = Qs_i K_j^T
          tile_gemm(kTile, kTile, Dp, q, Dp, 1, kt.get() + static_cast<size_t>(kj) * Dp * kTile,
                    kTile, s, kTile, false, diag ? Tri::kCols : Tri::kNone);
          // online softmax, row by row
          for (int r = 0; r < kTile; ++r) {
            float* row = s + r * kTile;
            const int lim = diag ? r + 1 : kTile;  // valid columns: c < lim
            const float mnew = row_max(row, lim, m[r]);
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int c = 0; c < kTile; ++c) {
              const float p = c < lim ? fast_expf(row[c] - mnew) : 0.0f;
              row[c] = p;
              sum += p;
            }
            if (mnew != m[r]) {
              const float corr = fast_expf(m[r] - mnew);  // 0 on the first tile (m = -inf)
              l[r] *= corr;
              float* orow = o + static_cast<size_t>(r) * Dp;
#pragma omp simd
              for (int c = 0; c < Dp; ++c) orow[c] *= corr;
              m[r] = mnew;
            }
            l[r] += sum;
          }
          // O_i += P V_j
          tile_gemm(kTile, Dp, kTile, s, kTile, 1, vv.get() + static_cast<size_t>(kj) * kTile * Dp,
                    Dp, o, Dp, true, diag ? Tri::kKUpper : Tri::kNone);
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
  const size_t tok_stride = static_cast<size_t>(NH) * HD;

#pragma omp parallel
  {
    Buffer qs(d.head_elems()), kk(d.head_elems()), kt(d.head_elems()), vt(d.head_elems());
    Buffer dob(d.head_elems()), dq(d.head_elems()), dk(d.head_elems()), dv(d.head_elems());
    Buffer dvec(d.Tp), lvec(d.Tp), pbuf(kTile * kTile), dsbuf(kTile * kTile);

#pragma omp for schedule(static)
    for (int bh = 0; bh < nheads; ++bh) {
      const int b = bh / NH, h = bh % NH;
      gather(qs.get(), qkv, b, h, 0, scale, false, d);
      gather(kk.get(), qkv, b, h, 1, 1.0f, false, d);
      gather(kt.get(), qkv, b, h, 1, 1.0f, true, d);
      gather(vt.get(), qkv, b, h, 2, 1.0f, true, d);
      // dO (padded) and D = rowsum(dO * O); lse of the head
      for (int t = 0; t < T; ++t) {
        const size_t off = (static_cast<size_t>(b) * T + t) * tok_stride + static_cast<size_t>(h) * HD;
        const float* g = dout + off;
        const float* o = out + off;
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
      std::memset(dq.get(), 0, d.head_elems() * sizeof(float));
      std::memset(dk.get(), 0, d.head_elems() * sizeof(float));
      std::memset(dv.get(), 0, d.head_elems() * sizeof(float));

      float* p = pbuf.get();
      float* ds = dsbuf.get();
      for (int qi = 0; qi < d.ntiles; ++qi) {
        const int i0 = qi * kTile;
        const float* q = qs.get() + static_cast<size_t>(i0) * Dp;
        const float* go = dob.get() + static_cast<size_t>(i0) * Dp;
        const float* Li = lvec.get() + i0;
        const float* Di = dvec.get() + i0;
        float* dqi = dq.get() + static_cast<size_t>(i0) * Dp;
        for (int kj = 0; kj <= qi; ++kj) {
          const bool diag = kj == qi;
          const size_t j0 = static_cast<size_t>(kj) * kTile;
          // P = exp(Qs_i K_j^T - lse)
          tile_gemm(kTile, kTile, Dp, q, Dp, 1, kt.get() + j0 * Dp, kTile, p, kTile, false,
                    diag ? Tri::kCols : Tri::kNone);
          for (int r = 0; r < kTile; ++r) {
            float* row = p + r * kTile;
            const int lim = diag ? r + 1 : kTile;
            const float L = Li[r];
#pragma omp simd
            for (int c = 0; c < kTile; ++c) row[c] = c < lim ? fast_expf(row[c] - L) : 0.0f;
          }
          // dV_j += P^T dO_i
          tile_gemm(kTile, Dp, kTile, p, 1, kTile, go, Dp, dv.get() + j0 * Dp, Dp, true,
                    diag ? Tri::kKLower : Tri::kNone);
          // dP = dO_i V_j^T
          tile_gemm(kTile, kTile, Dp, go, Dp, 1, vt.get() + j0 * Dp, kTile, ds, kTile, false,
                    diag ? Tri::kCols : Tri::kNone);
          // dS = P * (dP - D)
          for (int r = 0; r < kTile; ++r) {
            const float* prow = p + r * kTile;
            float* drow = ds + r * kTile;
            const int lim = diag ? r + 1 : kTile;
            const float Dr = Di[r];
#pragma omp simd
            for (int c = 0; c < kTile; ++c) drow[c] = c < lim ? prow[c] * (drow[c] - Dr) : 0.0f;
          }
          // dQ_i += dS K_j ; dK_j += dS^T Qs_i
          tile_gemm(kTile, Dp, kTile, ds, kTile, 1, kk.get() + j0 * Dp, Dp, dqi, Dp, true,
                    diag ? Tri::kKUpper : Tri::kNone);
          tile_gemm(kTile, Dp, kTile, ds, 1, kTile, q, Dp, dk.get() + j0 * Dp, Dp, true,
                    diag ? Tri::kKLower : Tri::kNone);
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
