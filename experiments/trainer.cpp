#include "experiments/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include <sys/resource.h>

#include "experiments/distributed_optimizer.h"
#include "experiments/eval_task.h"
#include "experiments/replica_divergence.h"
#include "experiments/hf_checkpoint.h"
#include "experiments/lr_schedule.h"
#include "experiments/metrics_file.h"
#include "experiments/pipeline.h"
#include "experiments/run_control.h"
#include "kernels/cpu/ops.h"
#include "kernels/ops.h"
#ifdef LOSSYTP_HAVE_CUDA
#include "kernels/cuda/ops.h"
#endif
#include "models/adamw.h"
#include "models/context_parallel.h"
#include "experiments/checkpoint.h"
#include "models/gpt.h"
#include "netmodels/link_states.h"
#include "netmodels/netmodel.h"
#include "sim/layout.h"
#include "sim/local_backend.h"
#include "sim/mpi_backend.h"

namespace lossytp {

namespace {

using Clock = std::chrono::steady_clock;

std::string format_duration(double s) {
  char buf[32];
  long t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

// The micro-batches of one global batch that this DP rank trains on: samples
// [dp_rank * per_rank, (dp_rank + 1) * per_rank) of the global batch, in order.
// A loss mask (empty: none) turns the targets it excludes into -1 (ignored: no loss, no gradient).
// Context parallelism: x and y hold this CP rank's two chunks of each sequence (cp_position).
struct Batcher {
  const std::vector<int32_t>& split;
  const std::vector<uint8_t>& mask;
  uint64_t seed, stream;
  int T, mb, per_rank, dp_rank, global;
  std::vector<int32_t> x, y;
  int cp = 1, cp_rank = 0;
  std::vector<int32_t> full_x, full_y;  // context parallelism: the whole sequences
  int local_T() const { return T / cp; }
  void fill(int64_t iteration, int micro) {
    std::vector<int32_t>& fx = cp > 1 ? full_x : x;
    std::vector<int32_t>& fy = cp > 1 ? full_y : y;
    fx.resize(static_cast<size_t>(mb) * T);
    fy.resize(static_cast<size_t>(mb) * T);
    for (int b = 0; b < mb; ++b) {
      int64_t sample = static_cast<int64_t>(dp_rank) * per_rank + static_cast<int64_t>(micro) * mb + b;
      fill_sequence(split, mask, seed, stream, iteration, sample, T, fx.data() + b * T, fy.data() + b * T);
    }
    if (cp == 1) return;
    const int Tl = local_T(), Tc = Tl / 2;
    x.resize(static_cast<size_t>(mb) * Tl);
    y.resize(static_cast<size_t>(mb) * Tl);
    for (int b = 0; b < mb; ++b)
      for (int r = 0; r < Tl; ++r) {
        const size_t from = static_cast<size_t>(b) * T + cp_position(r, Tc, cp_rank, cp);
        x[static_cast<size_t>(b) * Tl + r] = full_x[from];
        y[static_cast<size_t>(b) * Tl + r] = full_y[from];
      }
  }
  // Targets of the whole global batch of `iteration` that count in the loss: each rank computes
  // it alone (batches are a pure function of their indices), so no collective. Exactly
  // global x T without a mask.
  double targets(int64_t iteration) const {
    return static_cast<double>(count_targets(split.size(), mask, seed, stream, iteration, global, T));
  }
};

// Appends this iteration's traffic per site (this rank's view) under /comm/, and returns the
// iteration's totals.
SiteCounters log_comm(MetricsFile& m, const std::map<std::string, SiteCounters>& before,
                      const std::map<std::string, SiteCounters>& after, int iteration) {
  const size_t rows = m.rows("comm/iteration");  // flushed rows included
  m.append("comm/iteration", iteration);
  SiteCounters total;
  for (const auto& [site, c] : after) {
    SiteCounters b;
    if (auto f = before.find(site); f != before.end()) b = f->second;
    const std::string base = "comm/" + site + "/";
    const std::pair<const char*, int64_t> ints[] = {
        {"calls", c.calls - b.calls},
        {"messages", c.messages - b.messages},
        {"bytes", c.bytes - b.bytes},
        {"packets", c.packets - b.packets},
        {"packets_exposed", c.packets_exposed - b.packets_exposed},
        {"packets_lost", c.packets_lost - b.packets_lost},
        {"retransmissions", c.retransmissions - b.retransmissions},
        {"elements_filled", c.elements_filled - b.elements_filled}};
    // a site seen for the first time gets zeros for the earlier rows
    while (m.rows(base + "calls") < rows) {
      for (const auto& [name, v] : ints) m.append_int(base + name, 0);
      m.append(base + "sim_seconds", 0.0);
    }
    for (const auto& [name, v] : ints) m.append_int(base + name, v);
    m.append(base + "sim_seconds", c.sim_seconds - b.sim_seconds);
    total.packets += c.packets - b.packets;
    total.packets_lost += c.packets_lost - b.packets_lost;
    total.sim_seconds += c.sim_seconds - b.sim_seconds;
  }
  return total;
}

// Simulated link time of the traffic after the micro-batches (gradient reductions and parameter
// gathers: sites dp.*, pp.embed.grad, replicated.grad) this iteration on this rank.
double sim_seconds_after_micro_batches(const std::map<std::string, SiteCounters>& before,
                                       const std::map<std::string, SiteCounters>& after) {
  double s = 0.0;
  for (const auto& [site, c] : after) {
    if (site.rfind("dp.", 0) != 0 && site != "pp.embed.grad" && site != "replicated.grad") continue;
    const auto b = before.find(site);
    s += c.sim_seconds - (b != before.end() ? b->second.sim_seconds : 0.0);
  }
  return s;
}

}  // namespace

// This process's index among the processes of its node. The launcher's own count over the whole
// job when it gives one (so the runs of a grid side by side spread over the node's GPUs), else
// over the run's ranks (a collective over run_comm only: a grid's runs start at different times).
[[maybe_unused]] static int node_local_rank(MPI_Comm run_comm) {  // used with NCCL only
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* v = std::getenv(var); v && *v) return std::atoi(v);
  MPI_Comm node;
  MPI_Comm_split_type(run_comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local = 0;
  MPI_Comm_rank(node, &local);
  MPI_Comm_free(&node);
  return local;
}

TrainResult train(const TrainConfig& cfg, const TokenCorpus& corpus, MPI_Comm run_comm) {
  RunRanks r;
  MPI_Comm_size(run_comm, &r.size);
  MPI_Comm_rank(run_comm, &r.rank);
  r.run = std::make_unique<MpiBackend>(run_comm);
  if (cfg.compute().device == Device::CUDA) {
#if defined(LOSSYTP_HAVE_CUDA) && defined(LOSSYTP_HAVE_NCCL)
    // One GPU per rank: the processes of a node take its GPUs in turn; NCCL moves the data.
    const int local = node_local_rank(run_comm);
    const int gpus = cuda::device_count();
    if (gpus < 1) throw std::runtime_error("--device cuda: no CUDA GPU is visible to rank " + std::to_string(r.rank));
    cuda::set_device(local % gpus);
    // NCCL's sends wait for their receiver; the schedules need sends that do not.
    if (cfg.pp > 1)
      throw std::runtime_error("--pipeline-model-parallel-size > 1 with --device cuda over MPI ranks (NCCL) is not "
                               "supported yet; virtual ranks (--virtual-ranks N) run it on one GPU");
    r.make_groups = [run_comm](const Layout& l) { return make_nccl_groups(run_comm, l); };
#elif defined(LOSSYTP_HAVE_CUDA)
    throw std::runtime_error("--device cuda over MPI ranks needs NCCL, and this build has CUDA without it "
                             "(virtual ranks, --virtual-ranks N, work without NCCL)");
#else
    throw std::runtime_error("--device cuda: this build has no GPU path");
#endif
  } else {
    r.make_groups = [run_comm](const Layout& l) { return make_mpi_groups(run_comm, l); };
  }
  return train(cfg, corpus, std::move(r));
}

TrainResult train(const TrainConfig& cfg, const TokenCorpus& corpus, LocalWorld& world, int rank) {
  RunRanks r;
  r.size = world.size();
  r.rank = rank;
  std::vector<int> all(world.size());
  for (int i = 0; i < world.size(); ++i) all[i] = i;
  r.run = world.group("run", all, rank);
  if (world.device() != cfg.compute().device)
    throw std::logic_error("the LocalWorld's device differs from --device");
#ifdef LOSSYTP_HAVE_CUDA
  if (world.device() == Device::CUDA) cuda::set_device(0);  // virtual ranks share GPU 0
#endif
  r.make_groups = [&world](const Layout& l) { return make_local_groups(world, l); };
  return train(cfg, corpus, std::move(r));
}

std::string damaged_metrics_message(const std::string& path, const std::string& why) {
  return "cannot resume: " + why + ". It and the checkpoints are left untouched; to resume, move it aside (mv " +
         path + " " + path + ".damaged): the run then starts a new metrics.h5 holding only the iterations after "
         "its checkpoint";
}

TrainResult train(const TrainConfig& cfg, const TokenCorpus& corpus, RunRanks ranks) {
  const int world = ranks.size, rank = ranks.rank;
  if (rank == 0) {  // failure marks of an earlier attempt, removed before any rank can leave one
    std::filesystem::create_directories(cfg.out);
    clear_failure_marks(cfg.out);
  }
  ranks.run->barrier();
  const Layout layout = Layout::make(world, rank, cfg.tp, cfg.dp, cfg.pp, cfg.cp);
  auto groups = ranks.make_groups(layout);
  Comm& tp = *groups->tp;
  Comm& dp = *groups->dp;
  Comm& pp = *groups->pp;
  Comm& cp = *groups->cp;
  for (Comm* c : {&tp, &dp, &pp, &cp})
    if (c->device() != cfg.compute().device)
      throw std::logic_error("the run's communicators work on another device than --device");
  // Control traffic of the run (loss, divergence, checkpoints): never lossy, never counted.
  Backend& run = *ranks.run;
  for (Backend* b : {&tp.backend(), &dp.backend(), &pp.backend(), &cp.backend(), &run}) {
    b->set_timeout(cfg.comm_timeout);
    b->set_wait_check(peer_failure_check(cfg.out, rank));  // a failed peer ends the wait
  }
  auto net = std::make_shared<const net::NetSpec>(net::parse_net_spec(cfg.net));
  // ge ...,state=link: one store of this rank's link chains for its groups (keys name the group),
  // saved in its checkpoints
  auto link_states = std::make_shared<net::LinkStates>();
  for (Comm* c : {&tp, &dp, &pp, &cp}) {
    c->set_network(net, cfg.seed);
    c->set_wire_bf16(cfg.bf16);
    c->set_link_states(link_states);
  }
  TPOptions tp_opt;
  tp_opt.caat = net->caat;
  tp_opt.caat_p = net->caat_p;
  tp_opt.sequence_parallel = cfg.sequence_parallel && layout.tp > 1;  // TP = 1: a no-op, as Megatron
  const bool leader = rank == 0;
  const bool verbose = leader && !cfg.quiet;
  const bool header = verbose && cfg.progress_prefix.empty();

  // threads = 0 is resolved by the caller (it knows how many ranks share the node).
  cpu::set_num_threads(cfg.threads > 0 ? cfg.threads : 1);

  GPTModel model(cfg.model, layout.tp_rank, layout.tp, tp_opt, cfg.compute(), true,
                 PipelineStage{layout.pp_rank, layout.pp, cfg.pipeline_chunks()});
  model.set_recompute(cfg.recompute);
  if (layout.cp > 1) model.set_context_parallel(cp, cfg.cp_comm_type);
  model.init(cfg.seed);
  ParamStore& params = model.params();
  if (!cfg.hf_checkpoint.empty() && cfg.load.empty()) {  // iteration-0 weights; a resume has its own
    if (header) {
      std::printf("loading the weights of %s ...\n", cfg.hf_checkpoint.c_str());
      std::fflush(stdout);
    }
    try {
      hf::load_weights(hf::read_config(cfg.hf_checkpoint), cfg.model, params);
    } catch (const std::exception& e) {
      mark_failure(cfg.out, rank, e.what());
      throw;
    }
  }
  // --use-distributed-optimizer (DP > 1): AdamW state for this DP rank's shard only.
  std::unique_ptr<DistributedOptimizer> zero;
  if (cfg.use_distributed_optimizer && dp.size() > 1)  // over DP x CP, as Megatron's dp-cp group
    zero = std::make_unique<DistributedOptimizer>(params, dp.size(), dp.rank());
  AdamW opt = zero ? zero->make_adamw(cfg.adam) : AdamW(params, cfg.adam);
  const std::string config_json = cfg.to_json().dump();

  int64_t start_it = 0;
  std::string fallback;  // why newer checkpoints were passed over, when they were
  if (!cfg.load.empty()) {
    // every rank's file verified (checksum) and agreed on; an older one when the latest is corrupt
    try {
      std::vector<uint8_t> links;  // empty when the checkpoint has none: no chain has started
      start_it = load_intact_checkpoint(cfg.load, run, params, opt, &fallback, &links);
      if (!links.empty())
        link_states->deserialize(links.data(), links.size(), checkpoint_file(cfg.load, rank, start_it));
      if (leader && !cfg.quiet && !header && !fallback.empty())  // a grid run: no header
        std::printf("%swarning: %s\n", cfg.progress_prefix.c_str(), fallback.c_str());
    } catch (const std::exception& e) {
      mark_failure(cfg.out, rank, e.what());
      throw;
    }
  }

  const int T = cfg.model.seq_length, mb = cfg.micro_batch_size;
  const int per_rank = cfg.global_batch_size / layout.dp;
  const int n_micro = cfg.num_micro_batches();
  // Pipeline parallelism: the stage's schedule runs the micro-batches (experiments/pipeline.h).
  std::optional<PipelineRunner> pipe;
  if (layout.pp > 1) pipe.emplace(model, pp, n_micro);
  const double tokens_per_iter = static_cast<double>(cfg.global_batch_size) * T;
  const int gb = cfg.global_batch_size;
  Batcher train_data{corpus.train, corpus.train_mask, cfg.seed, 0, T, mb, per_rank, layout.dp_rank, gb,
                     {}, {}, layout.cp, layout.cp_rank, {}, {}};
  Batcher eval_data{corpus.val, corpus.val_mask, cfg.seed, 1, T, mb, per_rank, layout.dp_rank, gb,
                    {}, {}, layout.cp, layout.cp_rank, {}, {}};
  const int Tl = train_data.local_T();  // the tokens of each sequence on this rank (CP: T / cp)
  std::optional<EvalTask> task;  // --eval-task (checked before the run by reconcile_data)
  if (!cfg.eval_task.empty()) task = load_eval_task(cfg.eval_task, cfg.model.vocab_size, T);

  std::unique_ptr<MetricsFile> metrics;
  if (leader) {
    namespace fs = std::filesystem;
    fs::create_directories(cfg.out);
    const std::string path = (fs::path(cfg.out) / "metrics.h5").string();
    std::error_code ec;
    if (start_it > 0 && fs::exists(path) && fs::equivalent(cfg.load, cfg.out, ec)) {
      // continue the run's own file; rows past the checkpoint are dropped, not duplicated
      try {
        metrics = std::make_unique<MetricsFile>(MetricsFile::load(path));
      } catch (const std::exception& e) {
        // A damaged file is left as it is (and the checkpoints too): the other ranks learn of
        // it from the failure mark rather than after --comm-timeout. (lossytp train checks the
        // file before starting; a grid reaches this.)
        const std::string why = damaged_metrics_message(path, e.what());
        mark_failure(cfg.out, rank, why);
        throw std::runtime_error(why);
      }
      for (const char* g : {"train", "eval", "comm", "divergence"}) metrics->truncate_after(g, start_it);
    } else {
      metrics = std::make_unique<MetricsFile>(path);
    }
    metrics->set_attr("config", config_json);
    {  // the resolved configuration, also as a file next to metrics.h5
      const fs::path cj = fs::path(cfg.out) / "config.json";
      std::ofstream(cj.string() + ".tmp") << cfg.to_json().dump(1) << "\n";
      fs::rename(cj.string() + ".tmp", cj);
    }
    metrics->set_attr("status", std::string("running"));
    metrics->set_attr("version", std::string(LOSSYTP_VERSION));
    metrics->set_attr("num_parameters", static_cast<int64_t>(cfg.model.num_parameters()));
    metrics->set_attr("data_source", corpus.source);
#ifdef LOSSYTP_HAVE_CUDA
    if (cfg.compute().device == Device::CUDA) metrics->set_attr("gpu", cuda::device_name());
#endif
    metrics->set_attr("net", net->describe());
    metrics->set_attr("net_stationary_loss_rate", net->stationary_loss_rate());
    if (corpus.entropy_floor) metrics->set_attr("data_entropy_floor", *corpus.entropy_floor);
    metrics->flush();
  }
  if (header) {
    std::printf("lossytp train: %s, %lld parameters, %s, %d x %d micro-batches of %d x %d tokens\n",
                cfg.model_preset.c_str(), cfg.model.num_parameters(), layout.describe().c_str(),
                layout.dp, n_micro, mb, T);
    std::printf("data: %s (%zu train / %zu eval tokens, vocab %d)%s\n", corpus.source.c_str(),
                corpus.train.size(), corpus.val.size(), cfg.model.vocab_size,
                corpus.entropy_floor ? (", entropy floor " + std::to_string(*corpus.entropy_floor) + " nats").c_str() : "");
    if (task)
      std::printf("eval task: %s (%zu examples, %zu choices to score per evaluation)\n", task->path.c_str(),
                  task->examples.size(), task->num_sequences());
    std::printf("compute: %s, %s\n", cfg.device.c_str(),
                cfg.bf16 ? "bf16 GEMM operands and collectives, fp32 master weights" : "fp32");
    std::printf("network: %s\n", net->describe().c_str());
    if (!net->exact() && layout.world == 1)
      std::printf("note: a single rank sends no messages: the network model has nothing to act on\n");
    if (cfg.sequence_parallel)
      std::printf(layout.tp > 1 ? "sequence parallel: each TP rank holds %d of the %d tokens of a micro-batch\n"
                                : "note: --sequence-parallel does nothing with TP = 1 (as in Megatron)\n",
                  mb * T / layout.tp, mb * T);
    if (layout.cp > 1)
      std::printf("context parallel: each of %d CP ranks holds %d of the %d tokens of every sequence (chunks i and "
                  "%d-i of %d), attention over --cp-comm-type %s\n",
                  layout.cp, Tl, T, 2 * layout.cp - 1, 2 * layout.cp, cfg.cp_comm_type.c_str());
    if (layout.pp > 1) {
      const int V = cfg.pipeline_chunks(), per = cfg.model.num_layers / (layout.pp * V);
      std::printf("pipeline: %d stages x %d model chunk%s of %d layer%s, %s schedule, %d micro-batches per step\n",
                  layout.pp, V, V > 1 ? "s" : "", per, per > 1 ? "s" : "", V > 1 ? "interleaved 1F1B" : "1F1B",
                  n_micro);
    }
    std::printf("output: %s/metrics.h5\n", cfg.out.c_str());
    if (!fallback.empty()) std::printf("warning: %s\n", fallback.c_str());
    else if (start_it > 0) std::printf("resumed from the checkpoint of iteration %lld\n", static_cast<long long>(start_it));
    std::fflush(stdout);
  }

  auto evaluate = [&]() {
    double sum = 0.0, counted = 0.0;
    for (int k = 0; k < cfg.eval_iters; ++k) {
      counted += eval_data.targets(k);
      if (pipe) {
        sum += pipe->eval_step([&](int m, std::vector<int32_t>& x, std::vector<int32_t>& y) {
          eval_data.fill(k, m);
          x = eval_data.x;
          y = eval_data.y;
        }, mb, Tl, tp);
        continue;
      }
      for (int m = 0; m < n_micro; ++m) {
        eval_data.fill(k, m);
        sum += model.step(eval_data.x.data(), eval_data.y.data(), mb, Tl, tp, false, 0.0f);
      }
    }
    // Every TP rank holds the same losses: sum over DP (x CP: each holds its rows' losses), and
    // over the stages (the last has them).
    dp.backend().all_reduce_f64(&sum, 1, ReduceOp::Sum);
    if (layout.pp > 1) pp.backend().all_reduce_f64(&sum, 1, ReduceOp::Sum);
    return sum / counted;  // mean over the counted targets (NaN if a loss mask leaves none)
  };

  TrainResult result;
  result.status = "completed";
  result.start_iteration = start_it;
  if (cfg.train_iters == 0) {  // eval-only: the loaded weights, logged at iteration 0
    const double eval_loss = cfg.eval_iters > 0 ? evaluate() : NAN;
    if (cfg.eval_iters > 0) result.eval_loss.push_back(eval_loss);
    TaskScores acc;
    if (task) acc = evaluate_task(*task, model, mb, tp, dp.backend(), layout.dp_rank, layout.dp);
    if (leader) {
      metrics->append("eval/iteration", 0);
      if (cfg.eval_iters > 0) metrics->append("eval/loss", eval_loss);
      if (task) {
        metrics->append("eval/accuracy", acc.acc);
        metrics->append("eval/accuracy_norm", acc.acc_norm);
      }
      metrics->set_attr("weights_iteration", static_cast<int64_t>(start_it));
      metrics->set_attr("status", result.status);
      metrics->flush();
    }
    // --save-interval: the loaded weights as this run's checkpoint of iteration 0 (an imported
    // Hugging Face model in lossytp's per-rank layout, for `lossytp export` or a later --load).
    if (cfg.save_interval > 0 && cfg.load.empty())
      save_checkpoint(cfg.out, run, 0, params, opt, config_json, cfg.keep_checkpoints);
    if (verbose) {
      std::printf("%seval only (weights of %s)", cfg.progress_prefix.c_str(),
                  !cfg.load.empty() ? ("iteration " + std::to_string(start_it) + " of " + cfg.load).c_str()
                  : !cfg.hf_checkpoint.empty() ? cfg.hf_checkpoint.c_str() : "the initialisation");
      if (cfg.eval_iters > 0) std::printf(" | eval_loss %.6f", eval_loss);
      if (task) std::printf(" | acc %.4f | acc_norm %.4f (%lld examples)", acc.acc, acc.acc_norm,
                            static_cast<long long>(acc.n));
      std::printf("\n");
    }
    std::fflush(stdout);
    return result;
  }
  const auto t_start = Clock::now();
  double window_time = 0.0;
  int window_iters = 0;
  try {
  for (int it = static_cast<int>(start_it); it < cfg.train_iters; ++it) {
    if (cfg.debug_fail_at == it + 1 && rank == cfg.debug_fail_rank)
      throw std::runtime_error("injected failure at iteration " + std::to_string(it + 1) + " (--debug-fail-at)");
    const auto t0 = Clock::now();
    const auto comm_before = groups->stats->sites();
    tp.begin_step(it);
    dp.begin_step(it);
    pp.begin_step(it);
    cp.begin_step(it);
    params.grads().zero();
    double loss_sum = 0.0;
    // The loss and gradient are the mean over the counted targets of the global batch (all of
    // them without a loss mask: grad_scale = 1 / (global x T)). A batch whose targets are all
    // masked gets zero gradient and a NaN loss that is not a divergence.
    const double counted = train_data.targets(it);
    const float grad_scale = counted > 0 ? static_cast<float>(1.0 / counted) : 0.0f;
    const auto t_compute = Clock::now();
    if (pipe) {
      loss_sum = pipe->train_step([&](int m, std::vector<int32_t>& x, std::vector<int32_t>& y) {
        train_data.fill(it, m);
        x = train_data.x;
        y = train_data.y;
      }, mb, Tl, tp, grad_scale);
      pipe->reduce_embedding_grads();  // site pp.embed.grad
    } else {
      for (int m = 0; m < n_micro; ++m) {
        train_data.fill(it, m);
        loss_sum += model.step(train_data.x.data(), train_data.y.data(), mb, Tl, tp, true, grad_scale);
      }
    }
    const double compute_s = std::chrono::duration<double>(Clock::now() - t_compute).count();
    model.reduce_partial_grads(tp);
    // Data parallelism: sum the replicas' gradients (each already scaled by 1/counted targets),
    // all of them, or with the distributed optimizer this rank's shard (reduce-scatter).
    double sq = 0.0;
    if (zero) {
      zero->reduce_scatter_grads(dp);
      sq = zero->grad_sq_contribution();
      dp.backend().all_reduce_f64(&sq, 1, ReduceOp::Sum);
    } else {
      dp.all_reduce(params.grads().data(), params.numel(), "dp.grad");
      sq = params.grad_sq_contribution();
    }
    // Global gradient norm over the full model: sharded parameters from every TP rank,
    // replicated ones once, every stage's.
    tp.backend().all_reduce_f64(&sq, 1, ReduceOp::Sum);
    if (layout.pp > 1) pp.backend().all_reduce_f64(&sq, 1, ReduceOp::Sum);
    const double grad_norm = std::sqrt(sq);
    if (cfg.clip_grad > 0 && grad_norm > cfg.clip_grad) {
      const float s = static_cast<float>(cfg.clip_grad / (grad_norm + 1e-6));
      if (zero) zero->scale_grads(s);
      else ops::scale_inplace(params.device(), params.grads().data(), s, params.numel());
    }
    const float lr = lr_at(it, cfg.lr, cfg.min_lr, cfg.lr_warmup_iters, cfg.train_iters);
    if (zero) {
      opt.step(lr, zero->grad_shard());
      zero->all_gather_params(dp);  // site dp.param
    } else {
      opt.step(lr);
    }
    dp.backend().all_reduce_f64(&loss_sum, 1, ReduceOp::Sum);
    if (layout.pp > 1) pp.backend().all_reduce_f64(&loss_sum, 1, ReduceOp::Sum);  // the last stage's
    double loss = loss_sum / counted;
    // The simulated step: the pipeline's timeline (bubble and inter-stage link times included),
    // or the micro-batches' compute, then the link time of what follows them on this rank.
    pipeline::Timeline timeline;
    if (pipe) timeline = pipe->timeline();
    if (cfg.debug_nan_at == it + 1) loss = NAN;
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    result.train_loss.push_back(loss);
    window_time += dt;
    ++window_iters;
    const int iteration = it + 1;
    if (leader) {
      metrics->append("train/iteration", iteration);
      metrics->append("train/loss", loss);
      metrics->append("train/lr", lr);
      metrics->append("train/grad_norm", grad_norm);
      metrics->append("train/step_time_s", dt);
      const SiteCounters step = log_comm(*metrics, comm_before, groups->stats->sites(), iteration);
      metrics->append("train/sim_comm_s", step.sim_seconds);
      const double after = sim_seconds_after_micro_batches(comm_before, groups->stats->sites());
      const double sim_step = pipe ? timeline.span_s + after : compute_s + step.sim_seconds;
      metrics->append("train/sim_step_s", sim_step);
      metrics->append("train/pipeline_bubble", pipe ? timeline.bubble_fraction : 0.0);
    }
    // Under a lossy ring ranks can disagree: stop together when any rank sees a non-finite value.
    double bad = (counted > 0 && !std::isfinite(loss)) || !std::isfinite(grad_norm) ||
                 (cfg.max_loss > 0 && loss > cfg.max_loss);
    // A stop signal (preemption) seen by any rank stops them all after this iteration.
    double flags[2] = {bad, static_cast<double>(stop_signal())};
    run.all_reduce_f64(flags, 2, ReduceOp::Max);
    const bool diverged = flags[0] != 0;
    const bool last = iteration == cfg.train_iters || diverged;
    const int stop_sig = last ? 0 : static_cast<int>(flags[1]);
    const bool do_eval = !diverged && (cfg.eval_iters > 0 || task) &&
                         ((cfg.eval_interval > 0 && iteration % cfg.eval_interval == 0) || last);
    double eval_loss = NAN;
    TaskScores acc;
    if (do_eval) {
      // Evaluation meets the links' chains where training left them but hands them back
      // unchanged (state=link): training never depends on when it evaluates (--eval-interval,
      // the last iteration of a run stopped early and resumed).
      const net::LinkStates chains_before = *link_states;
      if (cfg.eval_iters > 0) eval_loss = evaluate();
      if (cfg.eval_iters > 0) result.eval_loss.push_back(eval_loss);
      if (task) acc = evaluate_task(*task, model, mb, tp, dp.backend(), layout.dp_rank, layout.dp);
      *link_states = chains_before;
      if (leader) {
        metrics->append("eval/iteration", iteration);
        if (cfg.eval_iters > 0) metrics->append("eval/loss", eval_loss);
        if (task) {
          // rows aligned with eval/iteration (NaN for evaluations of a resumed part without the task)
          for (const auto& [s, v] : {std::pair{"eval/accuracy", acc.acc}, {"eval/accuracy_norm", acc.acc_norm}}) {
            while (metrics->rows(s) + 1 < metrics->rows("eval/iteration")) metrics->append(s, NAN);
            metrics->append(s, v);
          }
        }
      }
    }
    if (iteration % cfg.log_interval == 0 || last || do_eval) {
      // outside the step time; over the raw backends (not lossy, not counted)
      const ReplicaDivergence div = measure_replica_divergence(params, tp.backend(), dp.backend(), run);
      result.replica_divergence.push_back(div.max());
      if (leader) {
        metrics->append("divergence/iteration", iteration);
        metrics->append("divergence/replica_divergence", div.max());
        metrics->append("divergence/replica_divergence_dp", div.dp);
        metrics->append("divergence/replica_divergence_tp", div.tp);
      }
      const double tok_s = tokens_per_iter * window_iters / window_time;
      result.tokens_per_second = tok_s;
      const bool line = cfg.progress_interval <= 0 || iteration % cfg.progress_interval == 0 || last;
      if (verbose && line) {
        const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
        const double eta = elapsed / (iteration - start_it) * (cfg.train_iters - iteration);
        std::printf("%siter %6d/%d | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s | %.0f ms/iter | ETA %s",
                    cfg.progress_prefix.c_str(), iteration, cfg.train_iters, loss, lr, grad_norm, tok_s,
                    1e3 * window_time / window_iters, format_duration(eta).c_str());
        if (do_eval && cfg.eval_iters > 0) std::printf(" | eval_loss %.4f", eval_loss);
        if (do_eval && task) std::printf(" | acc %.3f", acc.acc);
        if (div.max() != 0) std::printf(" | replica divergence %.3g", div.max());
        std::printf("\n");
        std::fflush(stdout);
      }
      window_time = 0.0;
      window_iters = 0;
      if (leader) {
        metrics->set_attr("tokens_per_second", tok_s);
        metrics->flush();
      }
    }
    if (diverged) {
      result.status = "diverged";
      if (verbose) std::printf("run diverged at iteration %d (loss %g, grad_norm %g)\n", iteration, loss, grad_norm);
      break;
    }
    if (stop_sig != 0 ||
        (cfg.save_interval > 0 && (iteration % cfg.save_interval == 0 || iteration == cfg.train_iters))) {
      // metrics first: every row up to the checkpoint is on disk before it can be resumed from
      if (leader) metrics->flush();
      save_checkpoint(cfg.out, run, iteration, params, opt, config_json, cfg.keep_checkpoints,
                      link_states->empty() ? std::vector<uint8_t>{} : link_states->serialize());
    }
    if (stop_sig != 0) {
      result.status = "interrupted";
      if (verbose)
        std::printf("%sinterrupted by %s after iteration %d: checkpoint written; resume with --load %s\n",
                    cfg.progress_prefix.c_str(), signal_name(stop_sig).c_str(), iteration, cfg.out.c_str());
      std::fflush(stdout);
      break;
    }
  }
  } catch (const std::exception& e) {
    groups->abandoned = true;
    // The first rank to fail tells the others; one that gave up waiting for it reports its cause.
    const bool peer = dynamic_cast<const PeerFailed*>(&e) != nullptr;
    const std::string cause = peer ? peer_failure(cfg.out, rank) : std::string(e.what());
    if (!peer) mark_failure(cfg.out, rank, cause);
    if (leader) {
      metrics->set_attr("status", std::string("failed"));
      metrics->set_attr("error", cause.empty() ? std::string(e.what()) : cause);
      metrics->flush();
      if (peer && !cause.empty()) throw std::runtime_error(cause);
    }
    throw;
  }
  // Observed loss rate over every message, received by any rank of the run, that the network
  // model acted on (the messages in its scope).
  const SiteCounters total = groups->stats->total();
  double lost[2] = {static_cast<double>(total.packets_lost), static_cast<double>(total.packets_exposed)};
  run.all_reduce_f64(lost, 2, ReduceOp::Sum);
  result.observed_loss_rate = lost[1] > 0 ? lost[0] / lost[1] : 0.0;
  // Peak resident memory of each rank (a process; virtual ranks share theirs), the largest.
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  double peak_rss = static_cast<double>(usage.ru_maxrss) * 1024.0;  // Linux: kilobytes
  run.all_reduce_f64(&peak_rss, 1, ReduceOp::Max);
  result.peak_rss_bytes = peak_rss;
  if (leader) {
    metrics->set_attr("peak_rss_bytes", static_cast<int64_t>(peak_rss));
    metrics->set_attr("observed_loss_rate", result.observed_loss_rate);
    metrics->set_attr("packets_exposed", static_cast<int64_t>(lost[1]));
    metrics->set_attr("packets_lost", static_cast<int64_t>(lost[0]));
    metrics->set_attr("status", result.status);
    metrics->flush();
  }
  return result;
}

}  // namespace lossytp
