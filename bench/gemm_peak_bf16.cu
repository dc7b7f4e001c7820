// The bf16 GEMM peak of this GPU, the denominator of bench/run_gpu.sh's MFU: cublasGemmEx with
// bf16 A and B, fp32 accumulation, square sizes, the best of several sizes and output types.
// Prints one JSON object. Without a GPU: a message and exit status 77.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>

#define CHECK(x)                                                              \
  do {                                                                        \
    if (auto e = (x); e != 0) {                                               \
      std::fprintf(stderr, "gemm_peak_bf16: %s failed (%d)\n", #x, int(e));   \
      return 1;                                                               \
    }                                                                         \
  } while (0)

int main(int argc, char** argv) {
  int iters = argc > 1 ? std::stoi(argv[1]) : 50;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIP: no CUDA device\n");
    return 77;
  }
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  cublasHandle_t h;
  CHECK(cublasCreate(&h));
  const int sizes[] = {4096, 8192, 12288};
  double best = 0;
  int best_n = 0;
  std::string best_out;
  std::string rows;
  for (int n : sizes) {
    const size_t elems = static_cast<size_t>(n) * n;
    void *a, *b, *c;
    CHECK(cudaMalloc(&a, elems * 2));
    CHECK(cudaMalloc(&b, elems * 2));
    CHECK(cudaMalloc(&c, elems * 4));
    CHECK(cudaMemset(a, 0x3c, elems * 2));  // ~1.0-ish bf16 values, no denormals
    CHECK(cudaMemset(b, 0x3c, elems * 2));
    for (cudaDataType_t out : {CUDA_R_16BF, CUDA_R_32F}) {
      const float alpha = 1.0f, beta = 0.0f;
      auto gemm = [&] {
        return cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b,
                            CUDA_R_16BF, n, &beta, c, out, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      };
      for (int i = 0; i < 5; ++i) CHECK(gemm());
      cudaEvent_t t0, t1;
      CHECK(cudaEventCreate(&t0));
      CHECK(cudaEventCreate(&t1));
      CHECK(cudaEventRecord(t0));
      for (int i = 0; i < iters; ++i) CHECK(gemm());
      CHECK(cudaEventRecord(t1));
      CHECK(cudaEventSynchronize(t1));
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, t0, t1));
      const double tflops = 2.0 * n * n * static_cast<double>(n) * iters / (ms * 1e-3) / 1e12;
      const char* name = out == CUDA_R_16BF ? "bf16" : "fp32";
      char row[128];
      std::snprintf(row, sizeof row, "%s{\"n\": %d, \"out\": \"%s\", \"tflops\": %.1f}",
                    rows.empty() ? "" : ", ", n, name, tflops);
      rows += row;
      if (tflops > best) { best = tflops; best_n = n; best_out = name; }
      cudaEventDestroy(t0);
      cudaEventDestroy(t1);
    }
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
  }
  std::printf("{\"gpu\": \"%s\", \"peak_bf16_tflops\": %.1f, \"at_n\": %d, \"out\": \"%s\", \"all\": [%s]}\n",
              prop.name, best, best_n, best_out.c_str(), rows.c_str());
  cublasDestroy(h);
  return 0;
}
