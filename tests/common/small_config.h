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

// The same with llama-tiny's parts (8 heads, 4 query groups, RMSNorm, RoPE, SwiGLU, untied
// output, no biases) at the small size.
inline TrainConfig small_llama_config(int tp, int dp, int micro, int global, int iters) {
  TrainConfig c = small_config(tp, dp, micro, global, iters);
  c.model_preset = "test-small-llama";
  c.model.num_attention_heads = 8;
  c.model.group_query_attention = true;
  c.model.num_query_groups = 4;
  c.model.ffn_hidden_size = 176;
  c.model.normalization = "RMSNorm";
  c.model.position_embedding_type = "rope";
  c.model.swiglu = true;
  c.model.add_bias_linear = false;
  c.model.untie_embeddings_and_output_weights = true;
  return c;
}

}  // namespace lossytp::testing
