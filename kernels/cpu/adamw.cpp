// AdamW (decoupled weight decay, bias-corrected), one streaming pass over param/grad/m/v.
#include "kernels/cpu/ops.h"

#include <cmath>
#include <cstddef>

namespace lossytp::cpu {

void adamw_update(float* param, const float* grad, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int64_t t) {
  // Bias corrections once, in double: 1 - beta^t loses digits in float for beta2 ~ 0.999.
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t));
  const float inv_bc1 = static_cast<float>(1.0 / bc1);
  const float inv_bc2 = static_cast<float>(1.0 / bc2);
  const float omb1 = 1.0f - beta1, omb2 = 1.0f - beta2;
  const ptrdiff_t len = static_cast<ptrdiff_t>(n);
#pragma omp parallel for simd schedule(static)
  for (ptrdiff_t i = 0; i < len; ++i) {
    const float g = grad[i];
    const float mi = beta1 * m[i] + omb1 * g;
    const float vi = beta2 * v[i] + omb2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi * inv_bc1;
    const float vhat = vi * inv_bc2;
    const float p = param[i];
    // p <- p - lr (mhat / (sqrt(vhat) + eps) + wd p), the weight decay using the old p
    // (same as PyTorch's AdamW, which first scales p by 1 - lr wd).
    param[i] = p - lr * (mhat / (std::sqrt(vhat) + eps) + weight_decay * p);
  }
}

}  // namespace lossytp::cpu
