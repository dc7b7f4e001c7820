#include "models/vocab_parallel_cross_entropy.h"

#include "kernels/ops.h"

namespace lossytp {

void VocabParallelCrossEntropy::forward(float* losses, float* logits, const int32_t* targets,
                                        int N, int V_local, int vocab_start, Comm& tp) {
  if (max_.numel() != static_cast<size_t>(N)) {
    max_ = Tensor({N}, dev_);
    target_ = Tensor({N}, dev_);
    sum_exp_ = Tensor({N}, dev_);
  }
  ops::ce_local_max(dev_, max_.data(), logits, N, V_local);
  tp.all_reduce(max_.data(), N, "ce.max", ReduceOp::Max);
  ops::ce_local_target(dev_, target_.data(), logits, targets, N, V_local, vocab_start);
  tp.all_reduce(target_.data(), N, "ce.target");
  ops::ce_local_exp_sum(dev_, sum_exp_.data(), logits, max_.data(), N, V_local);
  tp.all_reduce(sum_exp_.data(), N, "ce.sumexp");
  ops::ce_losses(dev_, losses, max_.data(), sum_exp_.data(), target_.data(), targets, N);
}

void VocabParallelCrossEntropy::backward(float* logits, const int32_t* targets, const float* dloss,
                                         int N, int V_local, int vocab_start) {
  ops::ce_backward_inplace(dev_, logits, sum_exp_.data(), targets, dloss, N, V_local, vocab_start);
}

}  // namespace lossytp
