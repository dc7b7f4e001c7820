#include "experiments/dry_run.h"

#include <algorithm>

#include <cmath>
#include <cstdio>

#include "models/gpt.h"
#include "netmodels/netmodel.h"

namespace lossytp {

namespace {

// Bytes one rank puts on the wire for a ring all-reduce of n elements over p ranks (what
// Comm counts under /comm/: 2 (p - 1) messages of ceil(n / p) elements).
double all_reduce_wire_bytes(double n, int p, double elem) {
  if (p <= 1 || n <= 0) return 0;
  return 2.0 * (p - 1) * std::ceil(n / p) * elem;
}

std::string gib(double bytes) {
  char b[64];
  std::snprintf(b, sizeof b, "%.2f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return b;
}

}  // namespace

nlohmann::json plan_run(const TrainConfig& cfg) {
  const net::NetSpec spec = net::parse_net_spec(cfg.net);
  TPOptions opt;
  opt.caat = spec.caat;
  opt.caat_p = spec.caat_p;
  opt.sequence_parallel = cfg.sequence_parallel && cfg.tp > 1;
  // Pipeline parallelism: the first stage, which keeps the most micro-batches in flight (the
  // warmup of Megatron's schedules, plus the one in its steady state).
  const int V = cfg.pipeline_chunks();
  GPTModel model(cfg.model, 0, cfg.tp, opt, cfg.compute(), /*allocate=*/false, PipelineStage{0, cfg.pp, V});
  model.set_recompute(cfg.recompute);
  GPTModel& m = model;
  const int mb = cfg.micro_batch_size, T = cfg.model.seq_length, n_micro = cfg.num_micro_batches();
  long long per_rank = 0;
  for (const ParamSpec& s : m.params().specs()) per_rank += static_cast<long long>(s.numel());
  const int in_flight = V > 1 ? std::min((cfg.pp - 1) * 2 + (V - 1) * cfg.pp + 1, n_micro * V)
                              : std::min(cfg.pp, n_micro);
  const int Tl = T / cfg.cp;  // context parallelism: each rank's rows of a sequence
  MemoryEstimate mem = model.memory_estimate(mb, Tl, cfg.pp > 1 ? in_flight : 1);
  // --use-distributed-optimizer: AdamW state for one DP shard of the (padded) arena, plus the
  // reduce-scattered gradient shard.
  const bool zero = cfg.use_distributed_optimizer && cfg.dp > 1;
  if (zero) {
    const double shard = static_cast<double>(optimizer_shard_numel(m.params().numel(), cfg.dp)) * sizeof(float);
    mem.optimizer = 2 * shard;
    mem.grads += shard;
  }

  nlohmann::json j;
  j["model"] = cfg.model_preset;
  j["config"] = cfg.to_json();
  j["parameters"] = cfg.model.num_parameters();
  j["parameters_per_rank"] = per_rank;
  j["vocab_size"] = cfg.model.vocab_size;
  j["padded_vocab_size"] = cfg.model.padded_vocab_size(cfg.tp);
  j["layout"] = {{"tp", cfg.tp}, {"cp", cfg.cp}, {"dp", cfg.dp}, {"pp", cfg.pp},
                 {"world", cfg.tp * cfg.cp * cfg.dp * cfg.pp},
                 {"micro_batch_size", mb}, {"global_batch_size", cfg.global_batch_size},
                 {"micro_batches_per_iteration", n_micro}};
  j["memory_bytes_per_rank"] = mem.total();
  j["memory_per_rank"] = {{"weights", mem.weights}, {"gradients", mem.grads},
                          {"optimizer", mem.optimizer}, {"activations", mem.activations}};
  j["flops_per_token"] = cfg.model.flops_per_token();

  const double elem = cfg.bf16 ? 2 : 4;
  nlohmann::json comm = nlohmann::json::object();
  double total = 0;
  const SiteElements sites = model.comm_elements(mb, Tl);
  for (const auto& [site, n] : sites.all_reduce) {
    const double e = site.rfind("ce.", 0) == 0 ? 4 : elem;  // CE statistics stay fp32
    const double per_call = all_reduce_wire_bytes(n, cfg.tp, e);
    const double bytes = site == "replicated.grad" ? per_call : per_call * n_micro;
    if (bytes > 0) {
      comm[site] = bytes;
      total += bytes;
    }
  }
  // --sequence-parallel: all-gathers and reduce-scatters, p - 1 messages of one rank's block
  for (const auto& [site, n] : sites.gathered) {
    const double bytes = cfg.tp > 1 ? (cfg.tp - 1) * (n / cfg.tp) * elem * n_micro : 0;
    if (bytes > 0) {
      comm[site] = bytes;
      total += bytes;
    }
  }
  if (zero) {  // reduce-scatter of the gradients, all-gather of the parameters: p - 1 blocks each
    const double b = (cfg.dp - 1) * static_cast<double>(optimizer_shard_numel(m.params().numel(), cfg.dp)) * elem;
    comm["dp.grad"] = b;
    comm["dp.param"] = b;
    total += 2 * b;
  } else if (const double b = all_reduce_wire_bytes(static_cast<double>(m.params().numel()), cfg.dp, elem); b > 0) {
    comm["dp.grad"] = b;
    total += b;
  }
  j["comm_bytes_per_iteration"] = comm;
  j["comm_bytes_per_iteration_total"] = total;
  return j;
}

std::string describe_plan(const nlohmann::json& j) {
  const auto& c = j["config"];
  std::string s;
  char b[512];
  std::snprintf(b, sizeof b,
                "model %s: %lld parameters (Hugging Face count, vocab %d), %lld per rank (padded vocab %d)\n",
                j["model"].get<std::string>().c_str(), j["parameters"].get<long long>(),
                j["vocab_size"].get<int>(), j["parameters_per_rank"].get<long long>(),
                j["padded_vocab_size"].get<int>());
  s += b;
  std::snprintf(b, sizeof b,
                "  %d layers, hidden %d, %d heads, %d query groups, ffn %d, seq %d; %s, %s, %s MLP, "
                "%s, %s output\n",
                c["num-layers"].get<int>(), c["hidden-size"].get<int>(), c["num-attention-heads"].get<int>(),
                c["num-query-groups"].get<int>(), c["ffn-hidden-size"].get<int>(), c["seq-length"].get<int>(),
                c["normalization"].get<std::string>().c_str(),
                c["position-embedding-type"].get<std::string>().c_str(),
                c["swiglu"].get<bool>() ? "SwiGLU" : "GELU",
                c["disable-bias-linear"].get<bool>() ? "no bias" : "biases",
                c["untie-embeddings-and-output-weights"].get<bool>() ? "untied" : "tied");
  s += b;
  const auto& l = j["layout"];
  std::snprintf(b, sizeof b, "layout: tp %d x cp %d x dp %d x pp %d = %d ranks; micro-batch %d, global batch %d (%d micro-batches per iteration)\n",
                l["tp"].get<int>(), l.value("cp", 1), l["dp"].get<int>(), l.value("pp", 1), l["world"].get<int>(), l["micro_batch_size"].get<int>(),
                l["global_batch_size"].get<int>(), l["micro_batches_per_iteration"].get<int>());
  s += b;
  const auto& m = j["memory_per_rank"];
  s += "memory per rank: " + gib(j["memory_bytes_per_rank"].get<double>()) + " (weights " +
       gib(m["weights"].get<double>()) + ", gradients " + gib(m["gradients"].get<double>()) +
       ", optimizer " + gib(m["optimizer"].get<double>()) + ", activations " +
       gib(m["activations"].get<double>()) + ")\n";
  s += "bytes on the wire per iteration per rank (exact network, ring algorithm):\n";
  for (const auto& [site, v] : j["comm_bytes_per_iteration"].items()) {
    std::snprintf(b, sizeof b, "  %-28s %16.0f\n", site.c_str(), v.get<double>());
    s += b;
  }
  std::snprintf(b, sizeof b, "  %-28s %16.0f\n", "total", j["comm_bytes_per_iteration_total"].get<double>());
  s += b;
  return s;
}

std::string check_memory(double estimate, int ranks_here, double available, Device dev) {
  if (available <= 0 || estimate * ranks_here <= available) return "";
  return "the run needs about " + gib(estimate * ranks_here) + " (" + gib(estimate) + " per rank x " +
         std::to_string(ranks_here) + " rank(s) on this " + (dev == Device::CUDA ? "GPU" : "machine") +
         ") but only " + gib(available) + " is available; use a smaller --micro-batch-size or " +
         "model, more tensor parallelism, or more machines (lossytp train --dry-run shows the estimate)";
}

}  // namespace lossytp
