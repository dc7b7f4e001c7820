// Megatron's vocab-parallel cross-entropy: logits stay sharded by vocabulary; three all-reduces
// over TP (the row max at "ce.max", the target logit at "ce.target", the sum of exponentials at
// "ce.sumexp") give every rank the exact loss of every token without gathering the logits.
#pragma once
#include <cstdint>
#include <vector>

#include "sim/comm.h"
#include "sim/tensor.h"

namespace lossytp {

class VocabParallelCrossEntropy {
 public:
  explicit VocabParallelCrossEntropy(Device dev = Device::CPU) : dev_(dev) {}
  // logits [N, V/tp] are replaced by exp(logit - max) (kept for the backward).
  // losses[N] = logsumexp over the full vocab - target logit.
  void forward(float* losses, float* logits, const int32_t* targets, int N, int V_local,
               int vocab_start, Comm& tp);
  // logits (holding the exponentials) <- d loss / d logits given dloss[N].
  void backward(float* logits, const int32_t* targets, const float* dloss, int N, int V_local,
                int vocab_start);

 private:
  Device dev_;
  Tensor max_, target_, sum_exp_;
};

}  // namespace lossytp
