// Vector, row and column helpers: the GPU twins of kernels/cpu/vector_ops.cpp. Reductions to a
// host value run in a fixed order (block partials, then one block over the partials), so they
// give the same result on every run.
#include <vector>

#include "kernels/cuda/column_sums.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace lossytp::cuda {

namespace {

__global__ void fill_k(float* x, float v, size_t n) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] = v;
}
__global__ void scale_k(float* x, float s, size_t n) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] *= s;
}
__global__ void add_k(float* y, const float* x, size_t n) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] += x[i];
}
__global__ void max_k(float* y, const float* x, size_t n) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = fmaxf(y[i], x[i]);
}
__global__ void bias_add_k(float* y, const float* b, int N, int C) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < static_cast<size_t>(N) * C) y[i] += b[i % C];
}
// db[c] += sum_n dy[n, c]: deterministic column sums (column_sums.cuh).
struct ColumnOf {
  const float* x;
  int C;
  __device__ void operator()(int n, int c, float (&v)[1]) const { v[0] = x[static_cast<size_t>(n) * C + c]; }
};
__global__ void copy_cols_k(float* dst, int ldd, const float* src, int lds, int N, int w) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(N) * w) return;
  const size_t n = i / w, c = i % w;
  dst[n * ldd + c] = src[n * lds + c];
}
__global__ void scale_cols_k(float* x, int N, int C, int c0, float s) {
  const int w = C - c0;
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<size_t>(N) * w) return;
  const size_t n = i / w, c = c0 + i % w;
  x[n * C + c] *= s;
}

constexpr int kReduceThreads = 256;
constexpr int kReduceBlocks = 128;  // partials per span

// Block tree reduction in shared memory, fixed order.
__device__ double block_sum(double v) {
  __shared__ double sh[kReduceThreads];
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kReduceThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

// partial[span * gridDim.x + block] = sum over the block's grid-stride elements of f(x).
template <bool kSquare>
__global__ void span_partials_k(const float* const* ptrs, const size_t* sizes, double* partial) {
  const int span = blockIdx.y;
  const float* x = ptrs[span];
  const size_t n = sizes[span];
  double acc = 0.0;
  for (size_t i = blockIdx.x * static_cast<size_t>(kReduceThreads) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * kReduceThreads) {
    const double v = x[i];
    acc += kSquare ? v * v : v;
  }
  const double s = block_sum(acc);
  if (threadIdx.x == 0) partial[static_cast<size_t>(span) * gridDim.x + blockIdx.x] = s;
}

// out[span] = sum of the span's partials, one block per span.
__global__ void span_totals_k(const double* partial, int per_span, double* out) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < per_span; i += kReduceThreads)
    acc += partial[static_cast<size_t>(blockIdx.x) * per_span + i];
  const double s = block_sum(acc);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// Device scratch of at least `bytes`, one per host thread (virtual ranks share the GPU).
struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
  void* get(size_t need) {
    if (need > bytes) {
      cuda::free(p);
      p = cuda::alloc(need);
      bytes = need;
    }
    return p;
  }
  ~Scratch() { cuda::free(p); }
};

double sum_spans(const std::vector<std::pair<const float*, size_t>>& spans, bool square) {
  const int k = static_cast<int>(spans.size());
  if (k == 0) return 0.0;
  thread_local Scratch table, partials;
  // span table: k pointers then k sizes
  std::vector<unsigned char> host(static_cast<size_t>(k) * (sizeof(float*) + sizeof(size_t)));
  const float** hp = reinterpret_cast<const float**>(host.data());
  size_t* hs = reinterpret_cast<size_t*>(host.data() + k * sizeof(float*));
  for (int i = 0; i < k; ++i) {
    hp[i] = spans[i].first;
    hs[i] = spans[i].second;
  }
  unsigned char* dtable = static_cast<unsigned char*>(table.get(host.size()));
  to_device(dtable, host.data(), host.size());
  double* dpart = static_cast<double*>(
      partials.get(sizeof(double) * (static_cast<size_t>(k) * kReduceBlocks + k)));
  double* dtot = dpart + static_cast<size_t>(k) * kReduceBlocks;
  const dim3 grid(kReduceBlocks, k);
  const auto* dptrs = reinterpret_cast<const float* const*>(dtable);
  const auto* dsizes = reinterpret_cast<const size_t*>(dtable + k * sizeof(float*));
  if (square) span_partials_k<true><<<grid, kReduceThreads>>>(dptrs, dsizes, dpart);
  else span_partials_k<false><<<grid, kReduceThreads>>>(dptrs, dsizes, dpart);
  check_launch("span_partials");
  span_totals_k<<<k, kReduceThreads>>>(dpart, kReduceBlocks, dtot);
  check_launch("span_totals");
  std::vector<double> tot(k);
  to_host(tot.data(), dtot, sizeof(double) * k);
  double s = 0.0;
  for (double t : tot) s += t;
  return s;
}

}  // namespace

void copy(float* dst, const float* src, size_t n) {
  if (n == 0 || dst == src) return;
  check_cuda(cudaMemcpy(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice), "cudaMemcpy on device");
}

void fill(float* x, float v, size_t n) {
  if (n == 0) return;
  fill_k<<<blocks_for(n), kThreads>>>(x, v, n);
  check_launch("fill");
}

void scale_inplace(float* x, float s, size_t n) {
  if (n == 0) return;
  scale_k<<<blocks_for(n), kThreads>>>(x, s, n);
  check_launch("scale_inplace");
}

void add_inplace(float* y, const float* x, size_t n) {
  if (n == 0) return;
  add_k<<<blocks_for(n), kThreads>>>(y, x, n);
  check_launch("add_inplace");
}

void max_inplace(float* y, const float* x, size_t n) {
  if (n == 0) return;
  max_k<<<blocks_for(n), kThreads>>>(y, x, n);
  check_launch("max_inplace");
}

void bias_add(float* y, const float* b, int N, int C) {
  const size_t n = static_cast<size_t>(N) * C;
  if (n == 0) return;
  bias_add_k<<<blocks_for(n), kThreads>>>(y, b, N, C);
  check_launch("bias_add");
}

void bias_grad(float* db, const float* dy, int N, int C) {
  if (C <= 0) return;
  column_sums<1>({{db}}, N, C, ColumnOf{dy, C}, "bias_grad");
}

void copy_cols(float* dst, int ldd, const float* src, int lds, int N, int w) {
  const size_t n = static_cast<size_t>(N) * w;
  if (n == 0) return;
  copy_cols_k<<<blocks_for(n), kThreads>>>(dst, ldd, src, lds, N, w);
  check_launch("copy_cols");
}

void scale_cols(float* x, int N, int C, int c0, float s) {
  const size_t n = static_cast<size_t>(N) * (C - c0);
  if (c0 >= C || n == 0) return;
  scale_cols_k<<<blocks_for(n), kThreads>>>(x, N, C, c0, s);
  check_launch("scale_cols");
}

double sum(const float* x, size_t n) { return sum_spans({{x, n}}, false); }

double sum_squares(const std::vector<std::pair<const float*, size_t>>& spans) {
  return sum_spans(spans, true);
}

}  // namespace lossytp::cuda
