// One GPT-2 block, pre-LN, Megatron-style tensor parallel:
//   x2 = x  + Proj(Attention(QKV(LN1(x))))     QKV column-parallel, Proj row-parallel
//   x3 = x2 + FC2(GELU(FC1(LN2(x2))))          FC1 column-parallel, FC2 row-parallel
// Each TP rank holds NH/tp heads and 4C/tp MLP channels. Communication per block: two
// all-reduces forward (proj, fc2), two backward (qkv and fc1 input gradients).
#pragma once
#include <string>

#include "models/config.h"
#include "models/layernorm.h"
#include "models/parallel_linear.h"
#include "sim/comm.h"
#include "sim/tensor.h"

namespace lossytp {

// Backward temporaries shared by all blocks of a model (sized for N tokens).
struct BlockScratch {
  Tensor d_norm;    // [N, C]   gradient at a LayerNorm output
  Tensor d_att;     // [N, C/tp]
  Tensor d_qkv;     // [N, 3C/tp]
  Tensor d_fc;      // [N, F/tp] gradient at fc1's output (and GELU recomputation)
  Tensor gelu;      // [N, F/tp] GELU output, recomputed in the backward to save memory
};

class TransformerBlock {
 public:
  TransformerBlock(ParamStore& store, const ModelConfig& cfg, int layer, int tp_size,
                   TPOptions opt = {});
  // x: [B, T, C] input (kept by the caller until backward); writes out [B, T, C].
  void forward(float* out, const float* x, int B, int T, Comm& tp, BlockScratch& s);
  // dres: [N, C] gradient at the block output, replaced in place by the gradient at its input.
  void backward(float* dres, const float* x, int B, int T, Comm& tp, BlockScratch& s);

 private:
  void ensure(int N);
  Device dev_;
  bool bf16_;  // --bf16: attention with bf16 GEMM operands (store.compute().bf16)
  int C_, NH_local_, HD_, F_local_;
  LayerNorm ln1_, ln2_;
  ColumnParallelLinear qkv_, fc1_;
  RowParallelLinear proj_, fc2_;
  int N_ = 0;
  // saved activations
  Tensor ln1_out_, qkv_out_, att_out_, lse_, x2_, ln2_out_, fc1_out_;
};

}  // namespace lossytp
