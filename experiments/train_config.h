// TrainConfig: everything a training run needs, resolved from (lowest to highest priority)
// the built-in defaults, the --model preset, a --config TOML file and the command-line flags.
// Flag names follow Megatron-LM; TOML files use the same names as keys (without the dashes).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "experiments/dataset.h"
#include "models/adamw.h"
#include "models/config.h"

namespace CLI { class App; }

namespace lossytp {

struct TrainConfig {
  std::string model_preset = "gpt-tiny";
  ModelConfig model;
  int tp = 1;
  int dp = 0;  // 0: derived from the world size
  int micro_batch_size = 8;
  int global_batch_size = 0;  // 0: micro_batch_size * dp
  float lr = 1e-3f;
  float min_lr = 1e-4f;
  int lr_warmup_iters = 10;
  int train_iters = 100;
  int eval_interval = 50;
  int eval_iters = 4;
  int log_interval = 10;
  float clip_grad = 1.0f;
  AdamWConfig adam;
  uint64_t seed = 1234;
  DataOptions data;
  std::string net = "exact";  // --net SPEC (netmodels/netmodel.h)
  std::string out;  // empty: runs/<model>-tp<tp>-dp<dp>-<time>
  int threads = 0;  // 0: cores / ranks on this node
  bool quiet = false;
  bool overwrite = false;
  bool vocab_size_given = false;  // --vocab-size was set explicitly (flag or file)

  // Micro-batches each DP rank runs per iteration (gradient accumulation steps).
  int num_micro_batches() const { return global_batch_size / (micro_batch_size * dp); }
  nlohmann::json to_json() const;
};

// Registers the train options on a CLI11 (sub)command. Returns the object that finish() turns
// into a TrainConfig after parsing.
struct TrainOptions {
  TrainConfig cfg;
  std::string config_file;
  CLI::App* app = nullptr;
};
void add_train_options(CLI::App& app, TrainOptions& opts);

// Expands `--config FILE.toml` in argv into the equivalent flags, placed before the user's own
// flags so that flags override the file. Throws std::invalid_argument for an unreadable file,
// a TOML syntax error or a key that is not an option of `app` (the message names file and key).
std::vector<std::string> expand_config_file(const std::vector<std::string>& args,
                                            const CLI::App& app);

// After parsing: applies the preset and the overrides, derives dp and the global batch from the
// world, and checks every value. Throws std::invalid_argument naming the offending flag.
TrainConfig finish_train_config(TrainOptions& opts, int world_size);

// Checks that the data fit the model (vocab, sequence length) and adopts the corpus's vocab for
// byte-level text when --vocab-size was not given.
void reconcile_data(TrainConfig& cfg, const TokenCorpus& corpus);

}  // namespace lossytp
