// The small training configuration shared by the tests (MPI ranks and virtual ranks alike).
#pragma once
#include "experiments/train_config.h"

namespace lossytp::testing {

// A small model that trains in well under a second per iteration.
inline TrainConfig small_config(int tp, int dp, int micro, int global, int iters) {
  TrainConfig c;
  c.model_preset = "test-small";
  c.model.vocab_size = 256;
  c.model.seq_length = 32;
  c.model.num_layers = 2;
  c.model.hidden_size = 64;
  c.model.num_attention_heads = 4;
  c.tp = tp;
  c.dp = dp;
  c.micro_batch_size = micro;
  c.global_batch_size = global;
  c.train_iters = iters;
  c.lr = 3e-3f;
  c.min_lr = 3e-4f;
  c.lr_warmup_iters = 3;
  c.eval_interval = 10;
  c.eval_iters = 2;
  c.log_interval = 5;
  c.quiet = true;
  c.threads = 1;
  c.seed = 7;
  c.data.vocab_size = 256;
  c.data.synthetic_train_tokens = 1 << 15;
  c.data.synthetic_val_tokens = 1 << 12;
  c.data.synthetic_branching = 8;
  return c;
}

}  // namespace lossytp::testing
