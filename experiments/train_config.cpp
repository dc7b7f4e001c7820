#include "experiments/train_config.h"

#include <CLI/CLI.hpp>
#include "experiments/toml.h"
#include "experiments/hf_checkpoint.h"

#include "experiments/eval_task.h"
#include "experiments/pipeline_schedule.h"
#include "models/context_parallel.h"
#include "kernels/ops.h"
#include "models/layer_spec.h"
#include "netmodels/netmodel.h"

#include <charconv>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace lossytp {

double json_float(float x) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::strtod(std::string(buf, r.ptr).c_str(), nullptr);
}
static double clean(float x) { return json_float(x); }

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json j;
  j["model"] = model_preset;
  j["vocab-size"] = model.vocab_size;
  j["seq-length"] = model.seq_length;
  j["num-layers"] = model.num_layers;
  j["hidden-size"] = model.hidden_size;
  j["num-attention-heads"] = model.num_attention_heads;
  j["ffn-hidden-size"] = model.ffn();
  j["group-query-attention"] = model.group_query_attention;
  j["num-query-groups"] = model.query_groups();
  j["normalization"] = model.normalization;
  j["norm-epsilon"] = clean(model.norm_epsilon);
  j["position-embedding-type"] = model.position_embedding_type;
  j["rotary-base"] = model.rotary_base;
  j["rotary-percent"] = model.rotary_percent;
  j["use-rope-scaling"] = model.use_rope_scaling;
  if (model.use_rope_scaling) {
    j["rope-scaling-factor"] = model.rope_scaling_factor;
    j["rope-scaling-low-freq-factor"] = model.rope_scaling_low_freq_factor;
    j["rope-scaling-high-freq-factor"] = model.rope_scaling_high_freq_factor;
    j["rope-scaling-original-max-position"] = model.rope_scaling_original_max_position;
  }
  j["attention"] = model.attention;
  if (!model.attention_pattern.empty()) {
    std::string pattern;
    for (const std::string& a : model.attention_pattern) pattern += (pattern.empty() ? "" : ",") + a;
    j["attention-pattern"] = pattern;
  }
  j["swiglu"] = model.swiglu;
  j["disable-bias-linear"] = !model.add_bias_linear;
  j["untie-embeddings-and-output-weights"] = model.untie_embeddings_and_output_weights;
  j["make-vocab-size-divisible-by"] = model.make_vocab_size_divisible_by;
  j["padded-vocab-size"] = model.padded_vocab_size(tp);
  j["init-method-std"] = clean(model.init_std);
  j["tensor-model-parallel-size"] = tp;
  j["data-parallel-size"] = dp;
  if (pp > 1) j["pipeline-model-parallel-size"] = pp;
  if (cp > 1) {  // absent when off, as above
    j["context-parallel-size"] = cp;
    j["cp-comm-type"] = cp_comm_type;
  }  // absent when off: older configs compare equal
  if (vp_layers > 0) j["num-layers-per-virtual-pipeline-stage"] = vp_layers;
  j["micro-batch-size"] = micro_batch_size;
  j["global-batch-size"] = global_batch_size;
  j["lr"] = clean(lr);
  j["min-lr"] = clean(min_lr);
  j["lr-warmup-iters"] = lr_warmup_iters;
  j["train-iters"] = train_iters;
  j["eval-interval"] = eval_interval;
  j["eval-iters"] = eval_iters;
  if (!eval_task.empty()) j["eval-task"] = eval_task;  // absent when unset: older configs compare equal
  j["log-interval"] = log_interval;
  j["clip-grad"] = clean(clip_grad);
  j["weight-decay"] = clean(adam.weight_decay);
  j["adam-beta1"] = clean(adam.beta1);
  j["adam-beta2"] = clean(adam.beta2);
  j["adam-eps"] = clean(adam.eps);
  j["seed"] = seed;
  j["data"] = data.path.empty() ? "synthetic" : data.path;
  j["eval-data"] = data.eval_path;
  j["data-format"] = data.format;
  if (!data.loss_mask.empty()) j["loss-mask"] = data.loss_mask;  // absent when unset, as eval-task
  if (!data.eval_loss_mask.empty()) j["eval-loss-mask"] = data.eval_loss_mask;
  j["eval-fraction"] = data.eval_fraction;
  j["data-seed"] = data.seed;
  j["net"] = net;
  j["hf-checkpoint"] = hf_checkpoint;
  j["save-interval"] = save_interval;
  j["keep-checkpoints"] = keep_checkpoints;
  j["comm-timeout"] = comm_timeout;
  j["max-loss"] = max_loss;
  j["out"] = out;
  j["threads"] = threads;
  j["device"] = device;
  j["bf16"] = bf16;
  if (!recompute.granularity.empty()) {  // absent when off: older configs compare equal
    j["recompute-granularity"] = recompute.granularity;
    if (recompute.full()) {
      j["recompute-method"] = recompute.method;
      j["recompute-num-layers"] = recompute.num_layers;
    }
  }
  if (use_distributed_optimizer) j["use-distributed-optimizer"] = true;  // absent when off: older configs compare equal
  if (sequence_parallel) j["sequence-parallel"] = true;  // absent when off, as above
  return j;
}

void add_train_options(CLI::App& app, TrainOptions& o) {
  TrainConfig& c = o.cfg;
  o.app = &app;
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--config", o.config_file,
                 "TOML file whose keys are these flags' names (flags given here override it)");
  std::string preset_names;
  for (const Preset& p : presets()) preset_names += (preset_names.empty() ? "" : ", ") + p.name;
  app.add_option("--model", c.model_preset, "model preset (docs/models.md): " + preset_names)
      ->capture_default_str();
  // model shape and parts: default from the preset, so no default shown here
  app.add_option("--vocab-size", c.model.vocab_size,
                 "true vocabulary size (default: preset's; byte text: 256); the tables are padded "
                 "(--make-vocab-size-divisible-by)");
  app.add_option("--seq-length", c.model.seq_length, "tokens per sequence");
  app.add_option("--num-layers", c.model.num_layers, "transformer blocks");
  app.add_option("--hidden-size", c.model.hidden_size, "model width");
  app.add_option("--num-attention-heads", c.model.num_attention_heads, "attention (query) heads");
  app.add_flag("--group-query-attention", c.model.group_query_attention,
               "grouped-query attention with --num-query-groups K/V heads");
  app.add_option("--num-query-groups", c.model.num_query_groups,
                 "K/V heads under grouped-query attention (implies --group-query-attention); must "
                 "divide the heads and be divisible by TP");
  app.add_option("--ffn-hidden-size", c.model.ffn_hidden_size,
                 "MLP width (default 4 x hidden; with --swiglu int(4 x hidden x 2/3 / 64) x 64)");
  app.add_option("--normalization", c.model.normalization, "LayerNorm or RMSNorm");
  app.add_option("--norm-epsilon", c.model.norm_epsilon, "epsilon of the norms (default 1e-5)");
  app.add_option("--position-embedding-type", c.model.position_embedding_type,
                 "learned_absolute or rope (rotate-half rotary embedding)");
  app.add_option("--rotary-base", c.model.rotary_base, "RoPE base (default 10000)");
  app.add_option("--rotary-percent", c.model.rotary_percent,
                 "fraction of each head's channels that RoPE rotates, in (0, 1] (default 1)");
  app.add_flag("--use-rope-scaling", c.model.use_rope_scaling,
               "Llama 3.x RoPE frequency scaling (Hugging Face rope_type llama3)");
  app.add_option("--rope-scaling-factor", c.model.rope_scaling_factor,
                 "with --use-rope-scaling: the stretch of the long wavelengths (default 8; Llama 3.2: 32)");
  app.add_option("--rope-scaling-low-freq-factor", c.model.rope_scaling_low_freq_factor,
                 "with --use-rope-scaling: wavelengths above original / this are stretched (default 1)");
  app.add_option("--rope-scaling-high-freq-factor", c.model.rope_scaling_high_freq_factor,
                 "with --use-rope-scaling: wavelengths below original / this are kept (default 4)");
  app.add_option("--rope-scaling-original-max-position", c.model.rope_scaling_original_max_position,
                 "with --use-rope-scaling: the pre-training context (default 8192)");
  std::string attentions;
  for (const std::string& a : attention_names()) attentions += (attentions.empty() ? "" : ", ") + a;
  app.add_option("--attention", c.model.attention,
                 "attention of every block (default softmax: causal MHA, or GQA): " + attentions);
  app.add_option("--attention-pattern", c.model.attention_pattern,
                 "comma-separated attentions cycled over the layers (layer l: entry l mod length, e.g. "
                 "semigroup,semigroup,softmax); overrides --attention. Known: " + attentions)
      ->delimiter(',');
  app.add_flag("--swiglu", c.model.swiglu, "SwiGLU MLP (silu-gated, Llama) instead of GELU");
  app.add_flag("--disable-bias-linear", o.disable_bias_linear, "no biases in the linear layers (Llama)");
  app.add_flag("--untie-embeddings-and-output-weights", c.model.untie_embeddings_and_output_weights,
               "a separate output layer instead of the embedding table (Llama)");
  app.add_option("--make-vocab-size-divisible-by", c.model.make_vocab_size_divisible_by,
                 "pad the vocabulary tables to a multiple of this x TP (default 128); padded ids "
                 "are masked out of the softmax");
  app.add_option("--init-method-std", c.model.init_std, "std of the normal init (default 0.02)");
  app.add_option("--tensor-model-parallel-size,--tp", c.tp, "tensor-parallel ranks per model")
      ->capture_default_str();
  app.add_option("--data-parallel-size,--dp", c.dp,
                 "model replicas (default: world size / (tp x pp))");
  app.add_option("--pipeline-model-parallel-size,--pp", c.pp,
                 "pipeline stages: the layers split evenly over them, activations and their gradients "
                 "sent point-to-point between stages (sites pp.fwd, pp.bwd) with 1F1B (default 1)")
      ->capture_default_str();
  app.add_option("--context-parallel-size,--cp", c.cp,
                 "context-parallel ranks: each holds 2 of 2 x cp chunks of every sequence (Megatron's load "
                 "balance); attention communicates K/V over them (sites *.kv.*, *.a2a.*); gradients reduced "
                 "over dp x cp (default 1)")
      ->capture_default_str();
  app.add_option("--cp-comm-type", c.cp_comm_type,
                 "context-parallel attention: p2p (ring of K/V blocks), all_gather (K/V gathered) or a2a "
                 "(Ulysses all-to-all, heads split over cp)")
      ->capture_default_str();
  app.add_option("--num-layers-per-virtual-pipeline-stage", c.vp_layers,
                 "layers per model chunk: each stage holds (layers / pp) / N chunks, run with "
                 "Megatron's interleaved 1F1B schedule (micro-batches a multiple of pp)");
  app.add_option("--micro-batch-size", c.micro_batch_size,
                 "sequences per micro-batch per rank (default: preset's)");
  app.add_option("--global-batch-size", c.global_batch_size,
                 "sequences per iteration over all replicas (default: micro x dp); "
                 "a multiple of micro x dp, the rest is gradient accumulation");
  app.add_option("--lr", c.lr, "peak learning rate")->capture_default_str();
  app.add_option("--min-lr", c.min_lr, "learning rate at the end of the cosine decay")
      ->capture_default_str();
  app.add_option("--lr-warmup-iters", c.lr_warmup_iters, "linear warmup iterations")
      ->capture_default_str();
  app.add_option("--train-iters", c.train_iters, "training iterations (0: evaluate the loaded weights only)")->capture_default_str();
  app.add_option("--eval-interval", c.eval_interval, "iterations between evaluations (0: only at the end)")
      ->capture_default_str();
  app.add_option("--eval-iters", c.eval_iters, "global batches of held-out data per evaluation")
      ->capture_default_str();
  app.add_option("--eval-task", c.eval_task,
                 "multiple-choice task (JSONL of token ids: context, choices, label) scored at every "
                 "evaluation: /eval/accuracy and /eval/accuracy_norm (docs/experiments.md)");
  app.add_option("--log-interval", c.log_interval, "iterations between progress lines and metrics.h5 flushes")
      ->capture_default_str();
  app.add_option("--clip-grad", c.clip_grad, "global gradient-norm clip (0: off)")->capture_default_str();
  app.add_option("--weight-decay", c.adam.weight_decay, "AdamW weight decay (matrices only)")
      ->capture_default_str();
  app.add_option("--adam-beta1", c.adam.beta1, "AdamW beta1")->capture_default_str();
  app.add_option("--adam-beta2", c.adam.beta2, "AdamW beta2")->capture_default_str();
  app.add_option("--adam-eps", c.adam.eps, "AdamW epsilon")->capture_default_str();
  app.add_option("--seed", c.seed, "seed of the initialisation and the batch sampling")
      ->capture_default_str();
  app.add_option("--data", c.data.path,
                 "training data: .txt (bytes), nanoGPT .bin (uint16), llm.c .bin (uint16 or uint32) "
                 "or a Megatron PREFIX (PREFIX.bin + PREFIX.idx) (docs/data.md); "
                 "default: the built-in synthetic Markov corpus");
  app.add_option("--data-path", o.data_path,
                 "Megatron indexed dataset PREFIX (PREFIX.bin + PREFIX.idx): --data PREFIX "
                 "--data-format megatron");
  app.add_option("--eval-data", c.data.eval_path, "held-out data file (default: tail of --data)");
  app.add_option("--eval-data-path", o.eval_data_path,
                 "held-out Megatron indexed dataset PREFIX: --eval-data PREFIX");
  app.add_option("--data-format", c.data.format, "auto, text, uint16, llmc or megatron")
      ->capture_default_str();
  app.add_option("--loss-mask", c.data.loss_mask,
                 "supervised fine-tuning: one uint8 per token of --data (1: a target in the loss, "
                 "0: ignored, e.g. prompt tokens); split with --data by --eval-fraction");
  app.add_option("--eval-loss-mask", c.data.eval_loss_mask,
                 "loss mask of --eval-data (default: every eval token counts)");
  app.add_option("--eval-fraction", c.data.eval_fraction,
                 "fraction of --data held out for eval when --eval-data is not given")
      ->capture_default_str();
  app.add_option("--data-seed", c.data.seed, "seed of the synthetic corpus")->capture_default_str();
  app.add_option("--net", c.net,
                 "network model: exact, drop:rate=R, ge:p=..,r=..,k=..,h=.. or ge:preset=NAME, "
                 "down:from=I,to=J, caat:p=P, composed with +; a model's links=SRC-DST|..; options fill=zero|"
                 "rescale|local|stale|count, scope=, mode=ring|endpoint, transport=lossy|reliable|bounded "
                 "(deadline=S), encode=hadamard (block=N), packet=, latency=, bandwidth= (docs/netmodels.md)")
      ->capture_default_str();
  app.add_option("--hf-checkpoint", c.hf_checkpoint,
                 "start from this Hugging Face GPT2LMHeadModel or LlamaForCausalLM folder (config.json "
                 "+ safetensors); the model's shape comes from its config.json (docs/finetuning.md)");
  app.add_option("--load", c.load,
                 "resume from the latest checkpoint in this run folder (usually the same as --out)");
  app.add_option("--save-interval", c.save_interval, "write a checkpoint every N iterations (0: never)")
      ->capture_default_str();
  app.add_option("--keep-checkpoints", c.keep_checkpoints,
                 "keep the newest N checkpoints (0: all); --load falls back to an older one when "
                 "the newest is corrupt")
      ->capture_default_str();
  app.add_option("--comm-timeout", c.comm_timeout,
                 "seconds a collective may wait for its peers before the run fails (0: forever)")
      ->capture_default_str();
  app.add_option("--max-loss", c.max_loss, "a train loss above this marks the run diverged (0: off)")
      ->capture_default_str();
  app.add_option("--debug-nan-at", c.debug_nan_at, "testing: make the loss of iteration N NaN")
      ->group("");
  app.add_option("--debug-fail-at", c.debug_fail_at, "testing: a rank throws at iteration N")
      ->group("");
  app.add_option("--debug-fail-rank", c.debug_fail_rank, "testing: the rank that --debug-fail-at fails")
      ->group("");
  app.add_option("--out", c.out, "run folder for metrics.h5 (default: runs/<model>-tp<T>-dp<D>-<time>)");
  app.add_option("--virtual-ranks", c.virtual_ranks,
                 "run N ranks as threads of this one process (no mpirun; any tp x dp layout)");
  app.add_option("--device", c.device,
                 "where ranks compute: cpu, or cuda (one GPU per MPI rank, NCCL between them; "
                 "--virtual-ranks share one GPU)")
      ->capture_default_str();
  app.add_flag("--bf16", c.bf16,
               "mixed precision: GEMM operands and collective payloads in bf16, fp32 master "
               "weights, optimizer state and other ops (on cpu: emulated, for comparisons)");
  app.add_flag("--use-distributed-optimizer", c.use_distributed_optimizer,
               "ZeRO-1 as Megatron: reduce-scatter gradients over DP (site dp.grad), shard the AdamW "
               "state (optimizer memory / DP), all-gather the parameters (site dp.param); no-op with DP = 1");
  app.add_flag("--sequence-parallel", c.sequence_parallel,
               "Megatron's sequence parallelism: norms and residual stream split along the tokens over "
               "TP; all-gathers before column-parallel and reduce-scatters after row-parallel layers "
               "(docs/models.md); no-op with TP = 1; not with caat");
  app.add_option("--recompute-granularity", c.recompute.granularity,
                 "activation recompute as Megatron: full (whole blocks run forward again in backward, "
                 "replaying their collectives' results) or selective (the attention core); default off");
  app.add_option("--recompute-method", c.recompute.method,
                 "with --recompute-granularity full: uniform (blocks in units of --recompute-num-layers, "
                 "only each unit's input kept) or block (the first --recompute-num-layers blocks recomputed)");
  app.add_option("--recompute-num-layers", c.recompute.num_layers,
                 "with --recompute-granularity full: blocks per unit (uniform) or blocks recomputed "
                 "(block), 1 to --num-layers (default 1)");
  app.add_option("--threads", c.threads, "compute threads per rank (default: cores / ranks on the node)");
  app.add_flag("--quiet", c.quiet, "no progress lines");
  app.add_flag("--overwrite", c.overwrite, "replace an existing metrics.h5 in --out");
  app.add_flag("--dry-run", c.dry_run,
               "resolve the config and layout, print parameters, memory per rank and bytes per "
               "communication site per iteration; allocate and train nothing");
  app.add_flag("--json", c.json, "with --dry-run: print one JSON object");
}

std::string toml_value_to_arg(const toml::node& n, const std::string& file,
                              const std::string& key) {
  if (auto v = n.as_string()) return v->get();
  if (auto v = n.as_integer()) return std::to_string(v->get());
  if (auto v = n.as_floating_point()) {
    // shortest text that reads back to the same double: 0.003, not 0.0030000000000000001
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v->get());
    return std::string(buf, r.ptr);
  }
  if (auto v = n.as_boolean()) return v->get() ? "true" : "false";
  throw std::invalid_argument(file + ": key '" + key + "' must be a string, number or boolean");
}

std::string flag_for_key(const std::string& key, const CLI::App& app, const std::string& where) {
  std::string flag = "--" + key;
  for (char& ch : flag) if (ch == '_') ch = '-';
  if (flag == "--config" || key.empty() || !app.get_option_no_throw(flag))
    throw std::invalid_argument(where + ": unknown key '" + key +
                                "' (keys are the flags of 'lossytp train --help' without the dashes)");
  return flag;
}

void append_key_value(std::vector<std::string>& args, const CLI::App& app, const std::string& key,
                      const std::string& value, const std::string& where) {
  const std::string flag = flag_for_key(key, app, where);
  const CLI::Option* opt = app.get_option_no_throw(flag);
  if (opt->get_expected_min() == 0) {  // a flag: true sets it, false clears it (over a preset)
    if (value == "true") args.push_back(flag);
    else if (value == "false") args.push_back(flag + "=false");
    else throw std::invalid_argument(where + ": key '" + key + "' takes true or false");
    return;
  }
  args.push_back(flag);
  args.push_back(value);
}

TrainConfig train_config_from_keys(const std::vector<std::pair<std::string, std::string>>& kv,
                                   const std::string& where) {
  CLI::App app;
  TrainOptions opts;
  add_train_options(app, opts);
  std::vector<std::string> args;
  for (const auto& [k, v] : kv) append_key_value(args, app, k, v, where);
  std::vector<std::string> rev(args.rbegin(), args.rend());
  try {
    app.parse(rev);
  } catch (const CLI::ParseError& e) {
    throw std::invalid_argument(where + ": " + e.what());
  }
  try {
    // A run's world is its own tp x cp x dp x pp (dp defaults to 1 here, not to the job's size).
    const int world = std::max(1, opts.cfg.tp) * std::max(1, opts.cfg.cp) * std::max(1, opts.cfg.dp) *
                      std::max(1, opts.cfg.pp);
    return finish_train_config(opts, world);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(where + ": " + e.what());
  }
}

namespace {
// Where a non-ASCII character stands outside a string or a comment, else {0, 0}. TOML allows
// them only there, and toml++ 3.3 (Debian 12) has undefined behaviour (TOML_UNREACHABLE in
// is_non_ascii_horizontal_whitespace, reached for U+00A1..U+0499 among others) on one in a bare
// key; found by tests/fuzz/fuzz_config. So they are refused before toml++ sees the text.
std::pair<int, int> stray_non_ascii(const std::string& t) {
  enum { Plain, Comment, Basic, Literal, MlBasic, MlLiteral } st = Plain;
  int line = 1, col = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    const auto c = static_cast<unsigned char>(t[i]);
    if (c == '\n') ++line, col = 0;
    else if ((c & 0xC0) != 0x80) ++col;  // one column per UTF-8 character
    const bool triple = i + 2 < t.size() && t[i + 1] == t[i] && t[i + 2] == t[i];
    switch (st) {
      case Plain:
        if (c >= 0x80) return {line, col};
        if (c == '#') st = Comment;
        else if (c == '"' || c == '\'') {
          st = triple ? (c == '"' ? MlBasic : MlLiteral) : (c == '"' ? Basic : Literal);
          if (triple) i += 2, col += 2;
        }
        break;
      case Comment: if (c == '\n') st = Plain; break;
      case Basic:
        if (c == '\\' && i + 1 < t.size() && t[i + 1] != '\n') ++i, ++col;
        else if (c == '"' || c == '\n') st = Plain;
        break;
      case Literal: if (c == '\'' || c == '\n') st = Plain; break;
      case MlBasic:
        if (c == '\\' && i + 1 < t.size() && t[i + 1] != '\n') ++i, ++col;
        else if (c == '"' && triple) st = Plain, i += 2, col += 2;
        break;
      case MlLiteral: if (c == '\'' && triple) st = Plain, i += 2, col += 2; break;
    }
  }
  return {0, 0};
}
}  // namespace

toml::table parse_toml_text(const std::string& text, const std::string& path) {
  if (const auto [line, col] = stray_non_ascii(text); line > 0)
    throw std::invalid_argument(path + ":" + std::to_string(line) + ":" + std::to_string(col) +
                                ": a non-ASCII character outside a string or comment (TOML keys and "
                                "values other than strings are ASCII)");
  try {
    return toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << path << ":" << e.source().begin.line << ":" << e.source().begin.column << ": "
       << e.description();
    throw std::invalid_argument(os.str());
  }
}

std::vector<std::string> expand_config_file(const std::vector<std::string>& args,
                                            const CLI::App& app) {
  std::string file;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) file = args[i + 1];
    if (args[i].rfind("--config=", 0) == 0) file = args[i].substr(9);
  }
  if (file.empty()) return args;
  std::ifstream probe(file, std::ios::binary);
  if (!probe) throw std::invalid_argument("--config: cannot read '" + file + "'");
  std::ostringstream text;
  text << probe.rdbuf();
  const toml::table tbl = parse_toml_text(text.str(), file);
  std::vector<std::string> out;
  for (const auto& [k, v] : tbl) {
    const std::string key(k.str());
    append_key_value(out, app, key, toml_value_to_arg(v, file, key), file);
  }
  out.insert(out.end(), args.begin(), args.end());
  return out;
}

TrainConfig finish_train_config(TrainOptions& o, int world) {
  CLI::App& app = *o.app;
  TrainConfig c = o.cfg;
  auto given = [&](const char* flag) { return app.count(flag) > 0; };
  auto bad = [](const std::string& m) { throw std::invalid_argument(m); };

  const Preset& p = find_preset(c.model_preset);
  ModelConfig m = p.model;
  if (given("--vocab-size")) m.vocab_size = c.model.vocab_size;
  if (given("--seq-length")) m.seq_length = c.model.seq_length;
  if (given("--num-layers")) m.num_layers = c.model.num_layers;
  if (given("--hidden-size")) m.hidden_size = c.model.hidden_size;
  if (given("--num-attention-heads")) m.num_attention_heads = c.model.num_attention_heads;
  if (given("--ffn-hidden-size")) m.ffn_hidden_size = c.model.ffn_hidden_size;
  if (given("--init-method-std")) m.init_std = c.model.init_std;
  if (given("--group-query-attention")) m.group_query_attention = c.model.group_query_attention;
  if (given("--num-query-groups")) {
    m.num_query_groups = c.model.num_query_groups;
    if (!given("--group-query-attention")) m.group_query_attention = true;
  }
  if (given("--normalization")) m.normalization = c.model.normalization;
  if (given("--norm-epsilon")) m.norm_epsilon = c.model.norm_epsilon;
  if (given("--position-embedding-type")) m.position_embedding_type = c.model.position_embedding_type;
  if (given("--rotary-base")) m.rotary_base = c.model.rotary_base;
  if (given("--rotary-percent")) m.rotary_percent = c.model.rotary_percent;
  if (given("--attention")) m.attention = c.model.attention;
  if (given("--attention-pattern")) m.attention_pattern = c.model.attention_pattern;
  if (given("--use-rope-scaling")) m.use_rope_scaling = c.model.use_rope_scaling;
  if (given("--rope-scaling-factor")) m.rope_scaling_factor = c.model.rope_scaling_factor;
  if (given("--rope-scaling-low-freq-factor")) m.rope_scaling_low_freq_factor = c.model.rope_scaling_low_freq_factor;
  if (given("--rope-scaling-high-freq-factor")) m.rope_scaling_high_freq_factor = c.model.rope_scaling_high_freq_factor;
  if (given("--rope-scaling-original-max-position"))
    m.rope_scaling_original_max_position = c.model.rope_scaling_original_max_position;
  if (given("--swiglu")) m.swiglu = c.model.swiglu;
  if (given("--disable-bias-linear")) m.add_bias_linear = !o.disable_bias_linear;
  if (given("--untie-embeddings-and-output-weights"))
    m.untie_embeddings_and_output_weights = c.model.untie_embeddings_and_output_weights;
  if (given("--make-vocab-size-divisible-by"))
    m.make_vocab_size_divisible_by = c.model.make_vocab_size_divisible_by;
  if (!c.hf_checkpoint.empty()) {
    if (given("--model"))
      bad("--model and --hf-checkpoint both choose the model: drop --model (the shape comes from " +
          c.hf_checkpoint + "/config.json)");
    const hf::HFModel h = hf::read_config(c.hf_checkpoint);
    m = hf::merge_model_config(h, m, given);
    hf::check_weights(h, m);  // every tensor present, of the right shape, before anything runs
    std::string name = std::filesystem::path(c.hf_checkpoint).lexically_normal().filename().string();
    if (name.empty()) name = std::filesystem::path(c.hf_checkpoint).lexically_normal().parent_path().filename().string();
    c.model_preset = "hf-" + name;
  }
  c.model = m;
  c.vocab_size_given = given("--vocab-size") || !c.hf_checkpoint.empty();
  const PresetTraining& pt = p.training;  // a preset's run of record, unless flags say otherwise
  if (pt.lr > 0 && !given("--lr")) c.lr = pt.lr;
  if (pt.min_lr >= 0 && !given("--min-lr")) c.min_lr = pt.min_lr;
  if (pt.train_iters > 0 && !given("--train-iters")) c.train_iters = pt.train_iters;
  if (pt.lr_warmup_iters >= 0 && !given("--lr-warmup-iters")) c.lr_warmup_iters = pt.lr_warmup_iters;
  if (pt.weight_decay >= 0 && !given("--weight-decay")) c.adam.weight_decay = pt.weight_decay;
  if (!given("--micro-batch-size")) {
    c.micro_batch_size = p.micro_batch_size;
    if (!c.hf_checkpoint.empty()) {  // as the presets: fewer sequences for larger models
      const long long n = m.num_parameters();
      c.micro_batch_size = n < 200'000'000 ? 8 : n < 500'000'000 ? 4 : n < 1'000'000'000 ? 2 : 1;
    }
  }

  if (c.tp < 1) bad("--tensor-model-parallel-size must be >= 1, got " + std::to_string(c.tp));
  if (c.dp < 0) bad("--data-parallel-size must be >= 1, got " + std::to_string(c.dp));
  if (c.pp < 1) bad("--pipeline-model-parallel-size must be >= 1, got " + std::to_string(c.pp));
  if (c.cp < 1) bad("--context-parallel-size must be >= 1, got " + std::to_string(c.cp));
  if (c.vp_layers < 0) bad("--num-layers-per-virtual-pipeline-stage must be >= 1, got " + std::to_string(c.vp_layers));
  const std::string pp_text = (c.cp > 1 ? " x --context-parallel-size " + std::to_string(c.cp) : "") +
                              (c.pp > 1 ? " x --pipeline-model-parallel-size " + std::to_string(c.pp) : "");
  const int model_ranks = c.tp * c.cp * c.pp;
  if (world % model_ranks != 0)
    bad("world size " + std::to_string(world) + " (mpirun -np or --virtual-ranks) is not divisible by --tensor-model-parallel-size " +
        std::to_string(c.tp) + pp_text);
  if (c.dp == 0) c.dp = world / model_ranks;
  if (model_ranks * c.dp != world)
    bad("--tensor-model-parallel-size " + std::to_string(c.tp) + " x --data-parallel-size " +
        std::to_string(c.dp) + pp_text + " = " + std::to_string(model_ranks * c.dp) + " ranks, but the world has " +
        std::to_string(world) + " (mpirun -np or --virtual-ranks)");
  c.model.validate(c.tp);
  attention_factory(c.model.attention);  // an unknown --attention names the known ones
  for (const std::string& a : c.model.attention_pattern) {
    try {
      attention_factory(a);
    } catch (const std::invalid_argument&) {
      bad("--attention-pattern: '" + a + "' is not an attention (known: " + [] {
        std::string k;
        for (const std::string& n : attention_names()) k += (k.empty() ? "" : ", ") + n;
        return k;
      }() + ")");
    }
  }
  if (c.micro_batch_size < 1) bad("--micro-batch-size must be >= 1");
  if (c.global_batch_size == 0) c.global_batch_size = c.micro_batch_size * c.dp;
  if (c.global_batch_size < 0 || c.global_batch_size % (c.micro_batch_size * c.dp) != 0)
    bad("--global-batch-size " + std::to_string(c.global_batch_size) +
        " is not a multiple of --micro-batch-size x data-parallel size = " +
        std::to_string(c.micro_batch_size * c.dp));
  if (!(c.lr > 0)) bad("--lr must be > 0");
  if (c.min_lr < 0 || c.min_lr > c.lr) bad("--min-lr must be in [0, --lr]");
  if (c.lr_warmup_iters < 0) bad("--lr-warmup-iters must be >= 0");
  if (c.train_iters < 0) bad("--train-iters must be >= 0 (0: evaluate the loaded weights only)");
  if (c.train_iters == 0 && c.eval_iters < 1 && c.eval_task.empty())
    bad("--train-iters 0 evaluates only: it needs --eval-iters >= 1 or an --eval-task");
  if (c.eval_interval < 0) bad("--eval-interval must be >= 0");
  if (c.eval_iters < 0) bad("--eval-iters must be >= 0");
  if (c.log_interval < 1) bad("--log-interval must be >= 1");
  if (c.clip_grad < 0) bad("--clip-grad must be >= 0");
  if (c.adam.weight_decay < 0) bad("--weight-decay must be >= 0");
  if (!(c.adam.beta1 >= 0 && c.adam.beta1 < 1)) bad("--adam-beta1 must be in [0, 1)");
  if (!(c.adam.beta2 >= 0 && c.adam.beta2 < 1)) bad("--adam-beta2 must be in [0, 1)");
  if (!(c.adam.eps > 0)) bad("--adam-eps must be > 0");
  if (c.threads < 0) bad("--threads must be >= 0");
  if (c.device != "cpu" && c.device != "cuda") bad("--device must be cpu or cuda, got '" + c.device + "'");
  if (const std::string why = ops::unavailable(c.compute().device); !why.empty())
    bad("--device " + c.device + ": " + why);
  if (c.virtual_ranks < 0) bad("--virtual-ranks must be >= 0");
  if (c.save_interval < 0) bad("--save-interval must be >= 0");
  if (c.keep_checkpoints < 0) bad("--keep-checkpoints must be >= 0");
  if (c.comm_timeout < 0) bad("--comm-timeout must be >= 0");
  if (c.max_loss < 0) bad("--max-loss must be >= 0");
  if (!(c.data.eval_fraction > 0 && c.data.eval_fraction < 1))
    bad("--eval-fraction must be in (0, 1)");
  const std::string& f = c.data.format;
  if (f != "auto" && f != "text" && f != "uint16" && f != "llmc" && f != "megatron")
    bad("--data-format must be auto, text, uint16, llmc or megatron, got '" + f + "'");
  if (given("--data-path")) {  // Megatron's flag: a PREFIX of .bin + .idx
    if (given("--data"))
      bad("--data-path " + o.data_path + " and --data " + c.data.path +
          " both name the training data: give one (--data-path PREFIX is --data PREFIX --data-format megatron)");
    if (f != "auto" && f != "megatron")
      bad("--data-path reads a Megatron .bin/.idx pair, but --data-format is '" + f + "'");
    c.data.path = o.data_path;
    c.data.format = "megatron";
  }
  if (given("--eval-data-path")) {
    if (given("--eval-data"))
      bad("--eval-data-path " + o.eval_data_path + " and --eval-data " + c.data.eval_path +
          " both name the eval data: give one");
    c.data.eval_path = o.eval_data_path;
  }
  if (!c.data.loss_mask.empty() && c.data.path.empty())
    bad("--loss-mask " + c.data.loss_mask + " needs --data or --data-path (the token file it masks)");
  if (!c.data.eval_loss_mask.empty() && c.data.eval_path.empty())
    bad("--eval-loss-mask " + c.data.eval_loss_mask +
        " needs --eval-data or --eval-data-path (without them --loss-mask is split with --data)");
  const net::NetSpec spec = net::parse_net_spec(c.net);  // throws naming the bad token, before any training
  // links= naming a rank outside a group of this layout (Comm::set_network checks it again)
  // (the dp group spans DP x CP ranks)
  for (const auto& [ranks, group] : {std::pair<int, const char*>{c.tp, "tp"}, {c.dp * c.cp, "dp"}, {c.pp, "pp"}, {c.cp, "cp"}})
    spec.check_ranks(ranks, group);
  if (c.sequence_parallel && c.tp > 1) {
    if (spec.caat)
      bad("--sequence-parallel does not combine with CAAT-Net (--net " + c.net +
          "): its partially synchronised row-parallel outputs have no reduce-scatter form; drop one of them");
    const long long tokens = static_cast<long long>(c.micro_batch_size) * c.model.seq_length;
    if (tokens % c.tp != 0)
      bad("--sequence-parallel splits the " + std::to_string(tokens) + " tokens of a micro-batch (--micro-batch-size " +
          std::to_string(c.micro_batch_size) + " x --seq-length " + std::to_string(c.model.seq_length) +
          ") over --tensor-model-parallel-size " + std::to_string(c.tp) + " ranks: they must divide evenly");
  }
  if (given("--recompute-num-layers") && !c.recompute.full())
    bad("--recompute-num-layers applies to --recompute-granularity full only");
  c.recompute.validate(c.model.num_layers);
  if (c.cp > 1 || c.cp_comm_type != "p2p") {
    try {
      check_cp_comm_type(c.cp_comm_type);
    } catch (const std::invalid_argument& e) {
      bad(e.what());
    }
  }
  if (c.cp > 1) {
    const std::string cp_flag = "--context-parallel-size " + std::to_string(c.cp);
    if (c.model.seq_length % (2 * c.cp) != 0)
      bad("--seq-length " + std::to_string(c.model.seq_length) + " is not divisible by 2 x " + cp_flag +
          " (each rank holds 2 of 2 x cp equal chunks of every sequence)");
    if (c.cp_comm_type == "a2a") {
      const int heads = c.model.num_attention_heads / c.tp, groups = c.model.query_groups() / c.tp;
      if (heads % c.cp != 0 || groups % c.cp != 0)
        bad("--cp-comm-type a2a splits the attention heads over the CP ranks: the " + std::to_string(heads) +
            " query heads and " + std::to_string(groups) + " K/V groups per TP rank (--num-attention-heads / "
            "--num-query-groups / --tensor-model-parallel-size) must be divisible by " + cp_flag);
    }
    for (int l = 0; l < c.model.num_layers; ++l)
      if (c.model.attention_of(l) != "softmax")
        bad("--context-parallel-size > 1 works with softmax attention only; layer " + std::to_string(l) + " uses '" +
            c.model.attention_of(l) + "' (--attention / --attention-pattern)");
    if (!c.recompute.granularity.empty())
      bad("--recompute-granularity is not supported with context parallelism yet");
    if (!c.eval_task.empty()) bad("--eval-task is not supported with context parallelism yet (the eval loss is)");
  }
  if (c.vp_layers > 0 && c.pp == 1)
    bad("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 1");
  if (c.pp > 1) {
    if (c.model.num_layers % c.pp != 0)
      bad("--num-layers " + std::to_string(c.model.num_layers) + " is not divisible by --pipeline-model-parallel-size " +
          std::to_string(c.pp) + " (the layers are split evenly over the stages)");
    if (c.vp_layers > 0 && (c.model.num_layers / c.pp) % c.vp_layers != 0)
      bad("--num-layers-per-virtual-pipeline-stage " + std::to_string(c.vp_layers) + " does not divide the " +
          std::to_string(c.model.num_layers / c.pp) + " layers of each of the " + std::to_string(c.pp) +
          " pipeline stages");
    try {
      pipeline::validate(c.pp, c.pipeline_chunks(), c.num_micro_batches());
    } catch (const std::invalid_argument& e) {
      bad(e.what());
    }
    if (c.recompute.full())
      bad("--recompute-granularity full is not supported with pipeline parallelism yet (selective is)");
    if (!c.eval_task.empty())
      bad("--eval-task is not supported with pipeline parallelism yet (the eval loss is)");
  }
  c.data.vocab_size = c.model.vocab_size;
  return c;
}

void reconcile_data(TrainConfig& c, const TokenCorpus& corpus) {
  if (corpus.format == "text" && !c.vocab_size_given) {
    c.model.vocab_size = 256;
  }
  // names the file, the first id beyond the vocabulary and its position (train and eval data)
  check_vocab(corpus, c.model.vocab_size);
  c.model.validate(c.tp);
  check_sequences(corpus, c.model.seq_length);
  // every line checked against the model's vocabulary and sequence length, before anything is written
  if (!c.eval_task.empty()) (void)load_eval_task(c.eval_task, c.model.vocab_size, c.model.seq_length);
}

}  // namespace lossytp
