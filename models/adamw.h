// AdamW over a ParamStore's arena, with Megatron's convention: weight decay on matrices and
// embeddings, none on biases and LayerNorm parameters. Moments live in arenas that mirror the
// parameter arena, so a checkpoint is three flat buffers.
#pragma once
#include <cstdint>

#include "models/param_store.h"
#include "sim/tensor.h"

namespace lossytp {

struct AdamWConfig {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
};

class AdamW {
 public:
  AdamW(ParamStore& store, AdamWConfig cfg);
  // One update with learning rate lr; the step counter t advances first (bias correction).
  void step(float lr);
  int64_t t() const { return t_; }
  void set_t(int64_t t) { t_ = t; }
  Tensor& m() { return m_; }
  Tensor& v() { return v_; }

 private:
  ParamStore& store_;
  AdamWConfig cfg_;
  Tensor m_, v_;
  int64_t t_ = 0;
};

}  // namespace lossytp
