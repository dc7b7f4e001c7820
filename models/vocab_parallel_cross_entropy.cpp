#include "models/vocab_parallel_cross_entropy.h"

#include "kernels/cpu/ops.h"

namespace lossytp {

void VocabParallelCrossEntropy::forward(float* losses, float* logits, const int32_t* targets,
                                        int N, int V_local, int vocab_start, Comm& tp) {
  max_.resize(N);
  target_.resize(N);
  sum_exp_.resize(N);
  cpu::ce_local_max(max_.data(), logits, N, V_local);
  tp.all_reduce(max_.data(), N, "ce.max", ReduceOp::Max);
  cpu::ce_local_target(target_.data(), logits, targets, N, V_local, vocab_start);
  tp.all_reduce(target_.data(), N, "ce.target");
  cpu::ce_local_exp_sum(sum_exp_.data(), logits, max_.data(), N, V_local);
  tp.all_reduce(sum_exp_.data(), N, "ce.sumexp");
  cpu::ce_losses(losses, max_.data(), sum_exp_.data(), target_.data(), N);
}

void VocabParallelCrossEntropy::backward(float* logits, const int32_t* targets, const float* dloss,
                                         int N, int V_local, int vocab_start) {
  cpu::ce_backward_inplace(logits, sum_exp_.data(), targets, dloss, N, V_local, vocab_start);
}

}  // namespace lossytp
