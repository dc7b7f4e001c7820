// Helpers shared by the MPI tests.
#pragma once
#include <mpi.h>

#include <filesystem>
#include <string>
#include <unistd.h>

#include "experiments/dataset.h"
#include "experiments/train_config.h"

namespace lossytp::testing {

inline int world_rank() { int r = 0; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
inline int world_size() { int s = 1; MPI_Comm_size(MPI_COMM_WORLD, &s); return s; }

// A temporary folder that every rank agrees on (rank 0 names it).
inline std::string shared_tmpdir(const std::string& tag) {
  char buf[256] = {0};
  if (world_rank() == 0) {
    auto p = std::filesystem::temp_directory_path() /
             ("lossytp-test-" + tag + "-" + std::to_string(::getpid()));
    std::filesystem::create_directories(p);
    std::snprintf(buf, sizeof buf, "%s", p.string().c_str());
  }
  MPI_Bcast(buf, sizeof buf, MPI_CHAR, 0, MPI_COMM_WORLD);
  return buf;
}

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
