// Semigroup attention on the GPU: the twins of kernels/cpu/semigroup_attention.cpp (the
// "generator step") and kernels/cpu/semigroup_esr_attention.cpp (the v1 "ESR" module), same
// layouts and conventions (kernels/cpu/ops.h). Correctness and determinism first, not speed:
//  - one warp (a block of 32 threads) per (batch, head, row); a ROW kernel handles query i and
//    loops over the keys j <= i, a COLUMN kernel handles key j and loops over the queries
//    i >= j, both in chunks of 32 (lane = the key or query of the chunk; its dot products run
//    over the head's D serially, the vector accumulations over D are spread over the lanes, HD
//    <= 256: up to 8 elements a lane), so no T x T matrix is ever stored: O(D) shared memory a
//    block, plus O(T) row vectors (lse, D) in global memory;
//  - the forwards use an online softmax (running max and sum, as flash attention) and save lse;
//    the backwards recompute P = exp(logit - lse);
//  - every sum has a fixed order (serial loops, xor-butterfly warp reductions), no atomics: the
//    same bits on every run. The gradients of the scalar parameters are per-row partials in a
//    device buffer (double), summed per segment by one block in a fixed order, then copied to
//    the host, where they are ADDED to the caller's host doubles.
// The small per-head constants of the ESR kernel (tau, ln w, beta/2, out_scale) and every
// double* gradient are HOST pointers (kernels/cuda/ops.h); they are uploaded into a thread_local
// scratch with one copy a call.
//
// Generator step, per (b, h) (scale = 1/sqrt(D), c = kappa / xi, dist = i - j):
//   forward rows: o_i = sum_j P_ij v_j, P_ij = softmax_j(scale q_i.k_j - c dist), y = (1-t) v + t o
//   backward rows:    dO = t dy, D_i = dO_i.o_i, dS_ij = P_ij (dO_i.v_j - D_i),
//                     dq_i = scale sum_j dS_ij k_j; partials dt_i = dy_i.(o_i - v_i),
//                     dc_i = -sum_j dS_ij dist
//   backward columns: dk_j = sum_i dS_ij scale q_i, dv_j = sum_i P_ij dO_i + (1 - t) dy_j
// ESR, per (b, h): whiten g in place (one warp per token and head), then
//   forward rows (1): u_i = sum_j P_ij v_j with an online softmax, lse
//   forward rows (2): w2_i = sum_j P_ij u_j (every u final), y = os ((1 - alpha) u + alpha w2)
//   backward columns (1): du_j = (1 - alpha) os dy_j + sum_{i >= j} P_ij dw2_i (dw2 = alpha os dy),
//                     D_j = dw2_j.w2_j + du_j.u_j, partial g_os
//   backward rows:    dP_ij = dw2_i.u_j + du_i.v_j, dz = P (dP - D_i), dq_i, the query half of
//                     dg~_i, partials of lam, ln tau, ln w, beta/2
//   backward columns (2): dk_j, dv_j, the key half of dg~_j, then the whitening backward.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublas_handle.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kMaxR = 8;   // elements of a D-vector a lane holds: HD <= 256
constexpr int kMaxNt = 8;  // ESR scales
constexpr unsigned kFull = 0xffffffffu;
constexpr int kReduceThreads = 256;

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// out[s] = sum of part[s * n .. s * n + n - 1] (one block a segment, fixed order).
__global__ void reduce_segments_k(const double* part, size_t n, double* out) {
  __shared__ double sh[kReduceThreads];
  const double* p = part + blockIdx.x * n;
  double s = 0.0;
  for (size_t k = threadIdx.x; k < n; k += kReduceThreads) s += p[k];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = kReduceThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}

// Host: the segment sums of part [nseg, n] (device), as host doubles.
std::vector<double> segment_sums(const double* part, int nseg, size_t n) {
  thread_local DeviceScratch out;
  double* d = out.get<double>(nseg);
  reduce_segments_k<<<nseg, kReduceThreads>>>(part, n, d);
  check_launch("semigroup reduce_segments");
  std::vector<double> h(nseg);
  to_host(h.data(), d, sizeof(double) * nseg);
  return h;
}

void check_hd(int HD, const char* what) {
  if (HD > kWarp * kMaxR)
    throw std::invalid_argument(std::string(what) + ": head dim " + std::to_string(HD) +
                                " > 256 is not supported on CUDA");
}

// ================================ generator step ================================
// qkv [B, T, 3, NH, HD]: token stride 3 NH HD; a head's q at h HD, k at (NH + h) HD, v at
// (2 NH + h) HD. Rows (b, h, i) are numbered as lse's [B, NH, T].

__global__ void sg_forward_k(float* y, float* o, float* lse, const float* qkv, int T, int NH,
                             int HD, float scale, float t, float c) {
  extern __shared__ float qs[];  // [HD] q_i / sqrt(D)
  const int row = blockIdx.x, lane = threadIdx.x;
  const int i = row % T, bh = row / T, b = bh / NH, h = bh % NH;
  const size_t tok = static_cast<size_t>(3) * NH * HD;
  const float* base = qkv + static_cast<size_t>(b) * T * tok + static_cast<size_t>(h) * HD;
  const float* kb = base + static_cast<size_t>(NH) * HD;
  const float* vb = base + static_cast<size_t>(2) * NH * HD;
  for (int e = lane; e < HD; e += kWarp) qs[e] = base[i * tok + e] * scale;
  __syncwarp();
  float acc[kMaxR];
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) acc[r] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int j0 = 0; j0 <= i; j0 += kWarp) {
    const int j = j0 + lane;
    float s = -INFINITY;
    if (j <= i) {
      const float* kj = kb + j * tok;
      float d = 0.0f;
      for (int e = 0; e < HD; ++e) d += qs[e] * kj[e];
      s = d - c * static_cast<float>(i - j);
    }
    const float mnew = fmaxf(m, warp_max(s));
    const float p = j <= i ? expf(s - mnew) : 0.0f;
    const float corr = expf(m - mnew);  // 0 at the first chunk (m = -inf)
    l = l * corr + warp_sum(p);
#pragma unroll
    for (int r = 0; r < kMaxR; ++r) acc[r] *= corr;
    const int nj = min(kWarp, i - j0 + 1);
    for (int jj = 0; jj < nj; ++jj) {
      const float pj = __shfl_sync(kFull, p, jj);
      const float* vj = vb + (j0 + jj) * tok;
#pragma unroll
      for (int r = 0; r < kMaxR; ++r) {
        const int e = lane + kWarp * r;
        if (e < HD) acc[r] += pj * vj[e];
      }
    }
    m = mnew;
  }
  const float inv = 1.0f / l;
  const size_t orow = (static_cast<size_t>(b) * T + i) * NH * HD + static_cast<size_t>(h) * HD;
  const float* vi = vb + i * tok;
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) {
    const int e = lane + kWarp * r;
    if (e < HD) {
      const float oe = acc[r] * inv;
      o[orow + e] = oe;
      y[orow + e] = (1.0f - t) * vi[e] + t * oe;
    }
  }
  if (lane == 0) lse[row] = m + logf(l);
}

// Rows of the backward: dq (OVERWRITTEN into dqkv's q part), Dv[row] = dO_i.o_i, partials
// part[row] = dt_i, part[R + row] = dc_i (R = B NH T).
__global__ void sg_backward_rows_k(float* dqkv, float* Dv, double* part, const float* dy,
                                   const float* qkv, const float* o, const float* lse, int T,
                                   int NH, int HD, float scale, float t, float c, size_t R) {
  extern __shared__ float sh[];  // qs [HD], dO [HD]
  float* qs = sh;
  float* dos = sh + HD;
  const int row = blockIdx.x, lane = threadIdx.x;
  const int i = row % T, bh = row / T, b = bh / NH, h = bh % NH;
  const size_t tok = static_cast<size_t>(3) * NH * HD;
  const float* base = qkv + static_cast<size_t>(b) * T * tok + static_cast<size_t>(h) * HD;
  const float* kb = base + static_cast<size_t>(NH) * HD;
  const float* vb = base + static_cast<size_t>(2) * NH * HD;
  const size_t orow = (static_cast<size_t>(b) * T + i) * NH * HD + static_cast<size_t>(h) * HD;
  float dsum = 0.0f, tsum = 0.0f;
  for (int e = lane; e < HD; e += kWarp) {
    qs[e] = base[i * tok + e] * scale;
    const float g = dy[orow + e], oe = o[orow + e];
    dos[e] = t * g;
    dsum += dos[e] * oe;
    tsum += g * (oe - vb[i * tok + e]);
  }
  __syncwarp();
  const float D = warp_sum(dsum);
  const float L = lse[row];
  float acc[kMaxR];
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) acc[r] = 0.0f;
  double dc = 0.0;
  for (int j0 = 0; j0 <= i; j0 += kWarp) {
    const int j = j0 + lane;
    float ds = 0.0f;
    if (j <= i) {
      const float* kj = kb + j * tok;
      const float* vj = vb + j * tok;
      float s = 0.0f, dp = 0.0f;
      for (int e = 0; e < HD; ++e) {
        s += qs[e] * kj[e];
        dp += dos[e] * vj[e];
      }
      const float p = expf(s - c * static_cast<float>(i - j) - L);
      ds = p * (dp - D);
      dc += static_cast<double>(ds) * (i - j);
    }
    const int nj = min(kWarp, i - j0 + 1);
    for (int jj = 0; jj < nj; ++jj) {
      const float d = __shfl_sync(kFull, ds, jj);
      const float* kj = kb + (j0 + jj) * tok;
#pragma unroll
      for (int r = 0; r < kMaxR; ++r) {
        const int e = lane + kWarp * r;
        if (e < HD) acc[r] += d * kj[e];
      }
    }
  }
  dc = warp_sum(dc);
  const double ts = warp_sum(static_cast<double>(tsum));
  float* dq = dqkv + static_cast<size_t>(b) * T * tok + static_cast<size_t>(h) * HD + i * tok;
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) {
    const int e = lane + kWarp * r;
    if (e < HD) dq[e] = acc[r] * scale;
  }
  if (lane == 0) {
    Dv[row] = D;
    part[row] = ts;
    part[R + row] = -dc;
  }
}

// Columns of the backward: dk, dv (OVERWRITTEN into dqkv's k and v parts) of key j.
__global__ void sg_backward_cols_k(float* dqkv, const float* Dv, const float* dy, const float* qkv,
                                   const float* lse, int T, int NH, int HD, float scale, float t,
                                   float c) {
  extern __shared__ float sh[];  // k_j [HD], v_j [HD]
  float* ks = sh;
  float* vs = sh + HD;
  const int row = blockIdx.x, lane = threadIdx.x;
  const int j = row % T, bh = row / T, b = bh / NH, h = bh % NH;
  const size_t tok = static_cast<size_t>(3) * NH * HD, ostride = static_cast<size_t>(NH) * HD;
  const float* base = qkv + static_cast<size_t>(b) * T * tok + static_cast<size_t>(h) * HD;
  const float* kb = base + static_cast<size_t>(NH) * HD;
  const float* vb = base + static_cast<size_t>(2) * NH * HD;
  const float* dyb = dy + static_cast<size_t>(b) * T * ostride + static_cast<size_t>(h) * HD;
  const float* Lb = lse + static_cast<size_t>(bh) * T;
  const float* Db = Dv + static_cast<size_t>(bh) * T;
  for (int e = lane; e < HD; e += kWarp) {
    ks[e] = kb[j * tok + e];
    vs[e] = vb[j * tok + e];
  }
  __syncwarp();
  float dk[kMaxR], dv[kMaxR];
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) dk[r] = dv[r] = 0.0f;
  for (int i0 = j; i0 < T; i0 += kWarp) {
    const int i = i0 + lane;
    float p = 0.0f, ds = 0.0f;
    if (i < T) {
      const float* qi = base + i * tok;
      const float* gi = dyb + i * ostride;
      float s = 0.0f, dp = 0.0f;
      for (int e = 0; e < HD; ++e) {
        s += (qi[e] * scale) * ks[e];
        dp += (t * gi[e]) * vs[e];
      }
      p = expf(s - c * static_cast<float>(i - j) - Lb[i]);
      ds = p * (dp - Db[i]);
    }
    const int ni = min(kWarp, T - i0);
    for (int ii = 0; ii < ni; ++ii) {
      const float pi = __shfl_sync(kFull, p, ii), di = __shfl_sync(kFull, ds, ii);
      const float* qi = base + (i0 + ii) * tok;
      const float* gi = dyb + (i0 + ii) * ostride;
#pragma unroll
      for (int r = 0; r < kMaxR; ++r) {
        const int e = lane + kWarp * r;
        if (e < HD) {
          dk[r] += di * (qi[e] * scale);
          dv[r] += pi * (t * gi[e]);
        }
      }
    }
  }
  float* dst = dqkv + static_cast<size_t>(b) * T * tok + static_cast<size_t>(h) * HD + j * tok;
  const float* gj = dyb + j * ostride;
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) {
    const int e = lane + kWarp * r;
    if (e < HD) {
      dst[NH * HD + e] = dk[r];
      dst[2 * NH * HD + e] = dv[r] + (1.0f - t) * gj[e];
    }
  }
}

// ==================================== ESR ====================================
// qkvg [B, T, NH, 4, HD]: (token, head) row (b T + t) NH + h holds [q | k | v | g], 4 HD floats.
// y, u, w2: [B, T, NH, HD] (row (b T + t) NH + h), lse [B, NH, T], rstd [B, T, NH].

struct EsrHead {  // one head's constants, in device memory
  const float* inv4tau;  // [Nt] 1 / (4 tau_t)
  const float* logw;     // [Nt] ln(w_t + 1e-12)
  float hb, os;
  int Nt;
};

__device__ __forceinline__ EsrHead esr_head(const float* consts, int NH, int Nt, int h) {
  const size_t n = static_cast<size_t>(NH) * Nt;
  return EsrHead{consts + static_cast<size_t>(h) * Nt, consts + n + static_cast<size_t>(h) * Nt,
                 consts[2 * n + h], consts[2 * n + NH + h], Nt};
}

// g~ = (g - mean) / sqrt(var + 1e-5) over the head's D, in place; one warp a (token, head).
__global__ void esr_whiten_k(float* qkvg, float* rstd, int HD) {
  const size_t row = blockIdx.x;
  const int lane = threadIdx.x;
  float* g = qkvg + row * 4 * HD + 3 * HD;
  float s = 0.0f;
  for (int e = lane; e < HD; e += kWarp) s += g[e];
  const float mean = warp_sum(s) / HD;
  float v = 0.0f;
  for (int e = lane; e < HD; e += kWarp) v += (g[e] - mean) * (g[e] - mean);
  const float r = 1.0f / sqrtf(warp_sum(v) / HD + 1e-5f);
  for (int e = lane; e < HD; e += kWarp) g[e] = (g[e] - mean) * r;
  if (lane == 0) rstd[row] = r;
}

// z = lam dp + (1 - lam) ln K(s), K = sum_t w'_t (1 + s / (4 tau_t))^-hb.
__device__ __forceinline__ float esr_logk(float s, const EsrHead& hp) {
  float K = 0.0f;
  for (int t = 0; t < hp.Nt; ++t) K += expf(hp.logw[t] - hp.hb * logf(1.0f + s * hp.inv4tau[t]));
  return logf(K);
}

// dp = (cdp q_i).k_j and s = |g~_i - g~_j|^2 with the query side in shared memory (qs = cdp q_i).
__device__ __forceinline__ void esr_dots(const float* qs, const float* gs, const float* kj,
                                         const float* gj, int HD, float& dp, float& s) {
  dp = 0.0f;
  s = 0.0f;
  for (int e = 0; e < HD; ++e) {
    dp += qs[e] * kj[e];
    const float d = gs[e] - gj[e];
    s += d * d;
  }
}

// Forward rows, pass 1 (kW2 = false): u_i and lse_i with an online softmax. Pass 2 (kW2 = true):
// w2_i = sum_j exp(z_ij - lse_i) u_j and y_i.
template <bool kW2>
__global__ void esr_forward_rows_k(float* y, float* u, float* w2, float* lse, const float* qkvg,
                                   const float* consts, float lam, float alpha, int T, int NH,
                                   int HD, int Nt, float cdp) {
  extern __shared__ float sh[];  // cdp q_i [HD], g~_i [HD]
  float* qs = sh;
  float* gs = sh + HD;
  const int row = blockIdx.x, lane = threadIdx.x;
  const int i = row % T, bh = row / T, b = bh / NH, h = bh % NH;
  const EsrHead hp = esr_head(consts, NH, Nt, h);
  const size_t tok = static_cast<size_t>(4) * NH * HD, ostride = static_cast<size_t>(NH) * HD;
  const float* base = qkvg + static_cast<size_t>(b) * T * tok + static_cast<size_t>(h) * 4 * HD;
  const size_t ob = static_cast<size_t>(b) * T * ostride + static_cast<size_t>(h) * HD;
  for (int e = lane; e < HD; e += kWarp) {
    qs[e] = base[i * tok + e] * cdp;
    gs[e] = base[i * tok + 3 * HD + e];
  }
  __syncwarp();
  const float L = kW2 ? lse[row] : 0.0f;
  // pass 1 sums v_j, pass 2 u_j
  const float* src = kW2 ? u + ob : base + 2 * HD;
  const size_t sstride = kW2 ? ostride : tok;
  float acc[kMaxR];
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) acc[r] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int j0 = 0; j0 <= i; j0 += kWarp) {
    const int j = j0 + lane;
    float z = -INFINITY;
    if (j <= i) {
      const float* kr = base + j * tok;
      float dp, s;
      esr_dots(qs, gs, kr + HD, kr + 3 * HD, HD, dp, s);
      z = lam * dp + (1.0f - lam) * esr_logk(s, hp);
    }
    float p, corr = 1.0f;
    if (kW2) {
      p = j <= i ? expf(z - L) : 0.0f;
    } else {
      const float mnew = fmaxf(m, warp_max(z));
      p = j <= i ? expf(z - mnew) : 0.0f;
      corr = expf(m - mnew);
      l = l * corr + warp_sum(p);
      m = mnew;
    }
#pragma unroll
    for (int r = 0; r < kMaxR; ++r) acc[r] *= corr;
    const int nj = min(kWarp, i - j0 + 1);
    for (int jj = 0; jj < nj; ++jj) {
      const float pj = __shfl_sync(kFull, p, jj);
      const float* sj = src + (j0 + jj) * sstride;
#pragma unroll
      for (int r = 0; r < kMaxR; ++r) {
        const int e = lane + kWarp * r;
        if (e < HD) acc[r] += pj * sj[e];
      }
    }
  }
  const size_t orow = ob + static_cast<size_t>(i) * ostride;
  if (kW2) {
#pragma unroll
    for (int r = 0; r < kMaxR; ++r) {
      const int e = lane + kWarp * r;
      if (e < HD) {
        w2[orow + e] = acc[r];
        y[orow + e] = hp.os * ((1.0f - alpha) * u[orow + e] + alpha * acc[r]);
      }
    }
  } else {
    const float inv = 1.0f / l;
#pragma unroll
    for (int r = 0; r < kMaxR; ++r) {
      const int e = lane + kWarp * r;
      if (e < HD) u[orow + e] = acc[r] * inv;
    }
    if (lane == 0) lse[row] = m + logf(l);
  }
}

// Segments of the ESR partials, per head h: [h W + w] over the B T rows of that head, W = 3 + 2 Nt:
// 0 lam, 1 hbeta, 2 oscale, 3 + t ln tau_t, 3 + Nt + t ln w_t.
__device__ __forceinline__ double* esr_part(double* part, int h, int w, int W, size_t BT) {
  return part + (static_cast<size_t>(h) * W + w) * BT;
}

// Backward columns (1): du_j = (1 - alpha) os dy_j + sum_{i >= j} P_ij dw2_i into du [B, T, NH,
// HD], Dv[row] = dw2_j.w2_j + du_j.u_j, and the partial of out_scale.
__global__ void esr_backward_du_k(float* du, float* Dv, double* part, const float* dy,
                                  const float* qkvg, const float* u, const float* w2,
                                  const float* lse, const float* consts, float lam, float alpha,
                                  int T, int NH, int HD, int Nt, float cdp) {
  extern __shared__ float sh[];  // k_j [HD], g~_j [HD]
  float* ks = sh;
  float* gs = sh + HD;
  const int row = blockIdx.x, lane = threadIdx.x;
  const int j = row % T, bh = row / T, b = bh / NH, h = bh % NH;
  const EsrHead hp = esr_head(consts, NH, Nt, h);
  const size_t tok = static_cast<size_t>(4) * NH * HD, ostride = static_cast<size_t>(NH) * HD;
  const float* base = qkvg + static_cast<size_t>(b) * T * tok + static_cast<size_t>(h) * 4 * HD;
  const size_t ob = static_cast<size_t>(b) * T * ostride + static_cast<size_t>(h) * HD;
  const float* Lb = lse + static_cast<size_t>(bh) * T;
  for (int e = lane; e < HD; e += kWarp) {
    ks[e] = base[j * tok + HD + e];
    gs[e] = base[j * tok + 3 * HD + e];
  }
  __syncwarp();
  float acc[kMaxR];
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) acc[r] = 0.0f;
  for (int i0 = j; i0 < T; i0 += kWarp) {
    const int i = i0 + lane;
    float p = 0.0f;
    if (i < T) {
      const float* qi = base + i * tok;
      const float* gi = qi + 3 * HD;
      float dp = 0.0f, s = 0.0f;
      for (int e = 0; e < HD; ++e) {
        dp += (qi[e] * cdp) * ks[e];
        const float d = gi[e] - gs[e];
        s += d * d;
      }
      p = expf(lam * dp + (1.0f - lam) * esr_logk(s, hp) - Lb[i]);
    }
    const int ni = min(kWarp, T - i0);
    for (int ii = 0; ii < ni; ++ii) {
      const float pi = __shfl_sync(kFull, p, ii);
      const float* dyi = dy + ob + static_cast<size_t>(i0 + ii) * ostride;
#pragma unroll
      for (int r = 0; r < kMaxR; ++r) {
        const int e = lane + kWarp * r;
        if (e < HD) acc[r] += pi * (alpha * (hp.os * dyi[e]));
      }
    }
  }
  const size_t orow = ob + static_cast<size_t>(j) * ostride;
  float d = 0.0f, gos = 0.0f;
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) {
    const int e = lane + kWarp * r;
    if (e < HD) {
      const float g = dy[orow + e], dyp = hp.os * g, dw = alpha * dyp;
      const float dur = (1.0f - alpha) * dyp + acc[r];
      du[orow + e] = dur;
      d += dw * w2[orow + e] + dur * u[orow + e];
      gos += g * ((1.0f - alpha) * u[orow + e] + alpha * w2[orow + e]);
    }
  }
  d = warp_sum(d);
  const double go = warp_sum(static_cast<double>(gos));
  if (lane == 0) {
    Dv[row] = d;
    esr_part(part, h, 2, 3 + 2 * Nt, static_cast<size_t>(gridDim.x) / NH)[static_cast<size_t>(b) * T + j] = go;
  }
}

// Per-logit backward quantities shared by the row and column kernels: given dz, the gradient at
// ds (d z / d s) and, when `acc` is set, the parameter partials.
struct EsrAcc {
  double lam = 0, hb = 0, tau[kMaxNt] = {}, w[kMaxNt] = {};
};
__device__ __forceinline__ float esr_dz_ds(float dz, float s, float lam, const EsrHead& hp, EsrAcc* acc) {
  float E[kMaxNt], Lt[kMaxNt], K = 0.0f;
  for (int t = 0; t < hp.Nt; ++t) {
    Lt[t] = logf(1.0f + s * hp.inv4tau[t]);
    E[t] = expf(hp.logw[t] - hp.hb * Lt[t]);
    K += E[t];
  }
  float ds = 0.0f;
  for (int t = 0; t < hp.Nt; ++t) {
    const float rr = (1.0f - lam) * dz * E[t] / K;
    const float inv = 1.0f / (1.0f / hp.inv4tau[t] + s);
    ds -= rr * hp.hb * inv;
    if (acc) {
      acc->w[t] += rr;
      acc->tau[t] += rr * hp.hb * s * inv;
      acc->hb -= static_cast<double>(rr) * Lt[t];
    }
  }
  return ds;
}

// Backward rows: dq_i (OVERWRITTEN into dqkvg's q part), the query half of dg~_i into dgq [B, T,
// NH, HD], and the partials of lam, ln tau, ln w, beta/2.
__global__ void esr_backward_rows_k(float* dqkvg, float* dgq, double* part, const float* dy,
                                    const float* qkvg, const float* u, const float* du,
                                    const float* Dv, const float* lse, const float* consts,
                                    float lam, float alpha, int T, int NH, int HD, int Nt,
                                    float cdp) {
  extern __shared__ float sh[];  // cdp q_i, g~_i, dw2_i, du_i [HD each]
  float* qs = sh;
  float* gs = sh + HD;
  float* dws = sh + 2 * HD;
  float* dus = sh + 3 * HD;
  const int row = blockIdx.x, lane = threadIdx.x;
  const int i = row % T, bh = row / T, b = bh / NH, h = bh % NH;
  const EsrHead hp = esr_head(consts, NH, Nt, h);
  const size_t tok = static_cast<size_t>(4) * NH * HD, ostride = static_cast<size_t>(NH) * HD;
  const float* base = qkvg + static_cast<size_t>(b) * T * tok + static_cast<size_t>(h) * 4 * HD;
  const size_t ob = static_cast<size_t>(b) * T * ostride + static_cast<size_t>(h) * HD;
  const size_t orow = ob + static_cast<size_t>(i) * ostride;
  for (int e = lane; e < HD; e += kWarp) {
    qs[e] = base[i * tok + e] * cdp;
    gs[e] = base[i * tok + 3 * HD + e];
    dws[e] = alpha * (hp.os * dy[orow + e]);
    dus[e] = du[orow + e];
  }
  __syncwarp();
  const float L = lse[row], D = Dv[row];
  float dq[kMaxR], dg[kMaxR];
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) dq[r] = dg[r] = 0.0f;
  EsrAcc acc;
  for (int j0 = 0; j0 <= i; j0 += kWarp) {
    const int j = j0 + lane;
    float dz = 0.0f, ds = 0.0f;
    if (j <= i) {
      const float* kr = base + j * tok;
      float dp, s;
      esr_dots(qs, gs, kr + HD, kr + 3 * HD, HD, dp, s);
      const float lk = esr_logk(s, hp);
      const float p = expf(lam * dp + (1.0f - lam) * lk - L);
      const float* uj = u + ob + static_cast<size_t>(j) * ostride;
      const float* vj = kr + 2 * HD;
      float dP = 0.0f;
      for (int e = 0; e < HD; ++e) dP += dws[e] * uj[e] + dus[e] * vj[e];
      dz = p * (dP - D);
      acc.lam += static_cast<double>(dz) * (dp - lk);
      ds = esr_dz_ds(dz, s, lam, hp, &acc);
    }
    const int nj = min(kWarp, i - j0 + 1);
    for (int jj = 0; jj < nj; ++jj) {
      const float a = __shfl_sync(kFull, dz, jj), d2 = __shfl_sync(kFull, ds, jj);
      const float* kr = base + (j0 + jj) * tok;
#pragma unroll
      for (int r = 0; r < kMaxR; ++r) {
        const int e = lane + kWarp * r;
        if (e < HD) {
          dq[r] += a * kr[HD + e];
          dg[r] += 2.0f * d2 * (gs[e] - kr[3 * HD + e]);
        }
      }
    }
  }
  float* dqr = dqkvg + static_cast<size_t>(b) * T * tok + static_cast<size_t>(h) * 4 * HD + i * tok;
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) {
    const int e = lane + kWarp * r;
    if (e < HD) {
      dqr[e] = cdp * lam * dq[r];
      dgq[orow + e] = dg[r];
    }
  }
  const int W = 3 + 2 * Nt;
  const size_t BT = static_cast<size_t>(gridDim.x) / NH, k = static_cast<size_t>(b) * T + i;
  const double gl = warp_sum(acc.lam), gh = warp_sum(acc.hb);
  if (lane == 0) {
    esr_part(part, h, 0, W, BT)[k] = gl;
    esr_part(part, h, 1, W, BT)[k] = gh;
  }
  for (int t = 0; t < Nt; ++t) {
    const double gt = warp_sum(acc.tau[t]), gw = warp_sum(acc.w[t]);
    if (lane == 0) {
      esr_part(part, h, 3 + t, W, BT)[k] = gt;
      esr_part(part, h, 3 + Nt + t, W, BT)[k] = gw;
    }
  }
}

// Backward columns (2): dk_j, dv_j, the key half of dg~_j (+ dgq_j), then the whitening backward
// dg = rstd (dg~ - mean dg~ - g~ mean(dg~ g~)); all OVERWRITTEN into dqkvg's k, v, g parts.
__global__ void esr_backward_cols_k(float* dqkvg, const float* dgq, const float* dy,
                                    const float* qkvg, const float* rstd, const float* u,
                                    const float* du, const float* Dv, const float* lse,
                                    const float* consts, float lam, float alpha, int T, int NH,
                                    int HD, int Nt, float cdp) {
  extern __shared__ float sh[];  // k_j, v_j, g~_j, u_j [HD each]
  float* ks = sh;
  float* vs = sh + HD;
  float* gs = sh + 2 * HD;
  float* us = sh + 3 * HD;
  const int row = blockIdx.x, lane = threadIdx.x;
  const int j = row % T, bh = row / T, b = bh / NH, h = bh % NH;
  const EsrHead hp = esr_head(consts, NH, Nt, h);
  const size_t tok = static_cast<size_t>(4) * NH * HD, ostride = static_cast<size_t>(NH) * HD;
  const float* base = qkvg + static_cast<size_t>(b) * T * tok + static_cast<size_t>(h) * 4 * HD;
  const size_t ob = static_cast<size_t>(b) * T * ostride + static_cast<size_t>(h) * HD;
  const size_t orow = ob + static_cast<size_t>(j) * ostride;
  const float* Lb = lse + static_cast<size_t>(bh) * T;
  const float* Db = Dv + static_cast<size_t>(bh) * T;
  for (int e = lane; e < HD; e += kWarp) {
    ks[e] = base[j * tok + HD + e];
    vs[e] = base[j * tok + 2 * HD + e];
    gs[e] = base[j * tok + 3 * HD + e];
    us[e] = u[orow + e];
  }
  __syncwarp();
  float dk[kMaxR], dv[kMaxR], dg[kMaxR];
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) dk[r] = dv[r] = dg[r] = 0.0f;
  for (int i0 = j; i0 < T; i0 += kWarp) {
    const int i = i0 + lane;
    float p = 0.0f, dz = 0.0f, ds = 0.0f;
    if (i < T) {
      const float* qi = base + i * tok;
      const float* gi = qi + 3 * HD;
      const float* dyi = dy + ob + static_cast<size_t>(i) * ostride;
      const float* dui = du + ob + static_cast<size_t>(i) * ostride;
      float dp = 0.0f, s = 0.0f, dP = 0.0f;
      for (int e = 0; e < HD; ++e) {
        dp += (qi[e] * cdp) * ks[e];
        const float d = gi[e] - gs[e];
        s += d * d;
        dP += (alpha * (hp.os * dyi[e])) * us[e] + dui[e] * vs[e];
      }
      p = expf(lam * dp + (1.0f - lam) * esr_logk(s, hp) - Lb[i]);
      dz = p * (dP - Db[i]);
      ds = esr_dz_ds(dz, s, lam, hp, nullptr);
    }
    const int ni = min(kWarp, T - i0);
    for (int ii = 0; ii < ni; ++ii) {
      const float pi = __shfl_sync(kFull, p, ii), a = __shfl_sync(kFull, dz, ii),
                  d2 = __shfl_sync(kFull, ds, ii);
      const float* qi = base + (i0 + ii) * tok;
      const float* dui = du + ob + static_cast<size_t>(i0 + ii) * ostride;
#pragma unroll
      for (int r = 0; r < kMaxR; ++r) {
        const int e = lane + kWarp * r;
        if (e < HD) {
          dk[r] += a * (cdp * lam * qi[e]);
          dv[r] += pi * dui[e];
          dg[r] += 2.0f * d2 * (gs[e] - qi[3 * HD + e]);
        }
      }
    }
  }
  // the whole dg~_j, then the whitening backward
  float m1 = 0.0f, m2 = 0.0f;
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) {
    const int e = lane + kWarp * r;
    if (e < HD) {
      dg[r] += dgq[orow + e];
      m1 += dg[r];
      m2 += dg[r] * gs[e];
    }
  }
  m1 = warp_sum(m1) / HD;
  m2 = warp_sum(m2) / HD;
  const float rs = rstd[(static_cast<size_t>(b) * T + j) * NH + h];
  float* dst = dqkvg + static_cast<size_t>(b) * T * tok + static_cast<size_t>(h) * 4 * HD + j * tok;
#pragma unroll
  for (int r = 0; r < kMaxR; ++r) {
    const int e = lane + kWarp * r;
    if (e < HD) {
      dst[HD + e] = dk[r];
      dst[2 * HD + e] = dv[r];
      dst[3 * HD + e] = rs * (dg[r] - m1 - gs[e] * m2);
    }
  }
}

// Uploads the host constants as [inv4tau (NH Nt) | logw (NH Nt) | hbeta (NH) | oscale (NH)].
const float* esr_consts(const float* tau, const float* logw, const float* hbeta,
                        const float* oscale, int NH, int Nt) {
  thread_local DeviceScratch buf;
  const size_t n = static_cast<size_t>(NH) * Nt;
  std::vector<float> h(2 * n + 2 * static_cast<size_t>(NH));
  for (size_t k = 0; k < n; ++k) {
    h[k] = 1.0f / (4.0f * tau[k]);
    h[n + k] = logw[k];
  }
  for (int k = 0; k < NH; ++k) {
    h[2 * n + k] = hbeta[k];
    h[2 * n + NH + k] = oscale[k];
  }
  float* d = buf.get<float>(h.size());
  to_device(d, h.data(), h.size() * sizeof(float));
  return d;
}

void check_esr(int HD, int Nt) {
  check_hd(HD, "semigroup_esr");
  if (Nt < 1 || Nt > kMaxNt)
    throw std::invalid_argument("semigroup_esr: " + std::to_string(Nt) + " scales (1 to 8 on CUDA)");
}

}  // namespace

void semigroup_attention_forward(float* y, float* o, float* lse, const float* qkv, int B, int T,
                                 int NH, int HD, float t, float c) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  check_hd(HD, "semigroup_attention");
  const unsigned rows = static_cast<unsigned>(static_cast<size_t>(B) * NH * T);
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  sg_forward_k<<<rows, kWarp, HD * sizeof(float)>>>(y, o, lse, qkv, T, NH, HD, scale, t, c);
  check_launch("semigroup_attention_forward");
}

void semigroup_attention_backward(float* dqkv, double* dt, double* dc, const float* dy,
                                  const float* qkv, const float* o, const float* lse, int B, int T,
                                  int NH, int HD, float t, float c) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  check_hd(HD, "semigroup_attention");
  const size_t R = static_cast<size_t>(B) * NH * T;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  thread_local DeviceScratch dbuf, pbuf;
  float* Dv = dbuf.get<float>(R);
  double* part = pbuf.get<double>(2 * R);
  const unsigned rows = static_cast<unsigned>(R);
  sg_backward_rows_k<<<rows, kWarp, 2 * HD * sizeof(float)>>>(dqkv, Dv, part, dy, qkv, o, lse, T, NH,
                                                              HD, scale, t, c, R);
  check_launch("semigroup_attention_backward (rows)");
  sg_backward_cols_k<<<rows, kWarp, 2 * HD * sizeof(float)>>>(dqkv, Dv, dy, qkv, lse, T, NH, HD,
                                                              scale, t, c);
  check_launch("semigroup_attention_backward (columns)");
  const std::vector<double> s = segment_sums(part, 2, R);
  *dt += s[0];
  *dc += s[1];
}

void semigroup_esr_forward(float* y, float* u, float* w2, float* lse, float* rstd, float* qkvg,
                           const float* tau, const float* logw, const float* hbeta,
                           const float* oscale, float lam, float alpha, int B, int T, int NH,
                           int HD, int Nt) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  check_esr(HD, Nt);
  const float* consts = esr_consts(tau, logw, hbeta, oscale, NH, Nt);
  const unsigned rows = static_cast<unsigned>(static_cast<size_t>(B) * NH * T);
  const float cdp = 0.8f / std::sqrt(static_cast<float>(HD));
  esr_whiten_k<<<rows, kWarp>>>(qkvg, rstd, HD);
  check_launch("semigroup_esr_forward (whiten)");
  esr_forward_rows_k<false><<<rows, kWarp, 2 * HD * sizeof(float)>>>(y, u, w2, lse, qkvg, consts, lam,
                                                                      alpha, T, NH, HD, Nt, cdp);
  check_launch("semigroup_esr_forward (u)");
  esr_forward_rows_k<true><<<rows, kWarp, 2 * HD * sizeof(float)>>>(y, u, w2, lse, qkvg, consts, lam,
                                                                     alpha, T, NH, HD, Nt, cdp);
  check_launch("semigroup_esr_forward (w2)");
}

void semigroup_esr_backward(float* dqkvg, double* g_lam, double* g_logtau, double* g_logw,
                            double* g_hbeta, double* g_oscale, const float* dy, const float* qkvg,
                            const float* rstd, const float* u, const float* w2, const float* lse,
                            const float* tau, const float* logw, const float* hbeta,
                            const float* oscale, float lam, float alpha, int B, int T, int NH,
                            int HD, int Nt) {
  if (B <= 0 || T <= 0 || NH <= 0 || HD <= 0) return;
  check_esr(HD, Nt);
  const float* consts = esr_consts(tau, logw, hbeta, oscale, NH, Nt);
  const size_t R = static_cast<size_t>(B) * NH * T, BT = static_cast<size_t>(B) * T;
  const int W = 3 + 2 * Nt;
  const float cdp = 0.8f / std::sqrt(static_cast<float>(HD));
  thread_local DeviceScratch dbuf, dubuf, dgbuf, pbuf;
  float* Dv = dbuf.get<float>(R);
  float* du = dubuf.get<float>(R * HD);
  float* dgq = dgbuf.get<float>(R * HD);
  double* part = pbuf.get<double>(static_cast<size_t>(NH) * W * BT);
  const unsigned rows = static_cast<unsigned>(R);
  esr_backward_du_k<<<rows, kWarp, 2 * HD * sizeof(float)>>>(du, Dv, part, dy, qkvg, u, w2, lse, consts,
                                                             lam, alpha, T, NH, HD, Nt, cdp);
  check_launch("semigroup_esr_backward (du)");
  esr_backward_rows_k<<<rows, kWarp, 4 * HD * sizeof(float)>>>(dqkvg, dgq, part, dy, qkvg, u, du, Dv, lse,
                                                               consts, lam, alpha, T, NH, HD, Nt, cdp);
  check_launch("semigroup_esr_backward (rows)");
  esr_backward_cols_k<<<rows, kWarp, 4 * HD * sizeof(float)>>>(dqkvg, dgq, dy, qkvg, rstd, u, du, Dv, lse,
                                                               consts, lam, alpha, T, NH, HD, Nt, cdp);
  check_launch("semigroup_esr_backward (columns)");
  const std::vector<double> s = segment_sums(part, NH * W, BT);
  for (int h = 0; h < NH; ++h) {
    const double* sh = s.data() + static_cast<size_t>(h) * W;
    *g_lam += sh[0];
    g_hbeta[h] += sh[1];
    g_oscale[h] += sh[2];
    for (int t = 0; t < Nt; ++t) {
      g_logtau[h * Nt + t] += sh[3 + t];
      g_logw[h * Nt + t] += sh[3 + Nt + t];
    }
  }
}

}  // namespace lossytp::cuda
