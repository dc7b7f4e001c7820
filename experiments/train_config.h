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
namespace toml { inline namespace v3 { class node; class table; } }

namespace lossytp {

// A float as the double with the same shortest decimal text (0.9f -> 0.9, not 0.8999999761...),
// so JSON files read as the user wrote them.
double json_float(float x);

struct TrainConfig {
  std::string model_preset = "gpt-tiny";
  ModelConfig model;
  int tp = 1;
  int dp = 0;  // 0: derived from the world size
  int pp = 1;  // pipeline stages (experiments/pipeline.h)
  int cp = 1;  // context-parallel ranks per sequence (models/context_parallel.h)
  std::string cp_comm_type = "p2p";  // p2p, all_gather or a2a
  int vp_layers = 0;  // --num-layers-per-virtual-pipeline-stage (0: no interleaving)
  int micro_batch_size = 8;
  int global_batch_size = 0;  // 0: micro_batch_size * dp
  float lr = 1e-3f;
  float min_lr = 1e-4f;
  int lr_warmup_iters = 10;
  int train_iters = 100;
  int eval_interval = 50;
  int eval_iters = 4;
  std::string eval_task;  // --eval-task FILE.jsonl: multiple-choice accuracy at every evaluation
  int log_interval = 10;
  float clip_grad = 1.0f;
  AdamWConfig adam;
  uint64_t seed = 1234;
  DataOptions data;
  std::string net = "exact";  // --net SPEC (netmodels/netmodel.h)
  std::string load;           // resume from the checkpoint in this run folder
  std::string hf_checkpoint;  // start from this Hugging Face model folder (experiments/hf_checkpoint.h)
  int save_interval = 0;      // checkpoint every N iterations (0: never)
  int keep_checkpoints = 2;   // the newest N checkpoints stay on disk (0: all)
  double comm_timeout = 600;  // seconds a collective may wait before the run fails
  double max_loss = 0;        // a train loss above this marks the run diverged (0: off)
  int debug_nan_at = 0;       // testing: the loss of this iteration becomes NaN
  int debug_fail_at = 0;      // testing: rank debug_fail_rank throws at this iteration
  int debug_fail_rank = 0;
  std::string out;  // empty: runs/<model>-tp<tp>-dp<dp>-<time>
  std::string device = "cpu";  // cpu or cuda (one GPU per rank; virtual ranks share GPU 0)
  bool bf16 = false;           // bf16 GEMM operands and collectives, fp32 master weights
  RecomputeOptions recompute;  // --recompute-granularity/-method/-num-layers (models/config.h)
  // ZeRO-1 (experiments/distributed_optimizer.h): gradients reduce-scattered over DP, AdamW
  // state sharded, parameters all-gathered. A no-op with DP = 1.
  bool use_distributed_optimizer = false;
  // Megatron's --sequence-parallel (models/config.h TPOptions): norms and the residual stream
  // split along the tokens over TP. A no-op with TP = 1 (as Megatron, which disables it).
  bool sequence_parallel = false;
  int threads = 0;  // 0: cores / ranks on this node
  int virtual_ranks = 0;  // > 0: run this many ranks as threads of one process (no MPI)
  bool quiet = false;
  std::string progress_prefix;  // set by the grid: progress lines start with it, no header
  int progress_interval = 0;    // progress line every N iterations (0: every log interval)
  bool overwrite = false;
  bool dry_run = false;  // --dry-run: print the resolved model, memory and traffic; train nothing
  bool json = false;     // --dry-run --json: one JSON object
  bool vocab_size_given = false;  // --vocab-size was set explicitly (flag or file)

  // Micro-batches each DP rank runs per iteration (gradient accumulation steps).
  int num_micro_batches() const { return global_batch_size / (micro_batch_size * dp); }
  // Model chunks per pipeline stage (> 1: the interleaved schedule).
  int pipeline_chunks() const { return vp_layers > 0 && pp > 1 ? model.num_layers / (pp * vp_layers) : 1; }
  Compute compute() const { return {device == "cuda" ? Device::CUDA : Device::CPU, bf16}; }
  nlohmann::json to_json() const;
};

// Registers the train options on a CLI11 (sub)command. Returns the object that finish() turns
// into a TrainConfig after parsing.
struct TrainOptions {
  TrainConfig cfg;
  std::string config_file;
  bool disable_bias_linear = false;  // --disable-bias-linear (ModelConfig keeps add_bias_linear)
  std::string data_path, eval_data_path;  // --data-path / --eval-data-path (Megatron prefixes)
  CLI::App* app = nullptr;
};
void add_train_options(CLI::App& app, TrainOptions& opts);

// Expands `--config FILE.toml` in argv into the equivalent flags, placed before the user's own
// flags so that flags override the file. Throws std::invalid_argument for an unreadable file,
// a TOML syntax error or a key that is not an option of `app` (the message names file and key).
std::vector<std::string> expand_config_file(const std::vector<std::string>& args,
                                            const CLI::App& app);

// The train flag for a config-file key ("tensor_model_parallel_size" or "tp" ->
// "--tensor-model-parallel-size" / "--tp"); throws naming `where` and the key if unknown.
std::string flag_for_key(const std::string& key, const CLI::App& app, const std::string& where);
void append_key_value(std::vector<std::string>& args, const CLI::App& app, const std::string& key,
                      const std::string& value, const std::string& where);

// A TrainConfig from key = value pairs (config-file keys, later pairs override earlier ones),
// as if they were given as flags to a run of its own tp x dp ranks. Errors are prefixed with
// `where` (e.g. "grid.toml, run net=ge-one_seed=1").
TrainConfig train_config_from_keys(const std::vector<std::pair<std::string, std::string>>& kv,
                                   const std::string& where);

// Parses a TOML text (`path` names it in errors; config and grid files). Throws
// std::invalid_argument "path:line:column: what", also for a non-ASCII character outside a
// string or comment (invalid TOML, and undefined behaviour inside toml++ 3.3).
toml::table parse_toml_text(const std::string& text, const std::string& path);

// A TOML scalar as a flag value (numbers in full precision). Throws for tables and arrays.
std::string toml_value_to_arg(const toml::node& n, const std::string& file, const std::string& key);

// After parsing: applies the preset and the overrides, derives dp and the global batch from the
// world, and checks every value. Throws std::invalid_argument naming the offending flag.
TrainConfig finish_train_config(TrainOptions& opts, int world_size);

// Checks that the data fit the model (vocab, sequence length) and adopts the corpus's vocab for
// byte-level text when --vocab-size was not given; checks the --eval-task file against the model.
void reconcile_data(TrainConfig& cfg, const TokenCorpus& corpus);

}  // namespace lossytp
