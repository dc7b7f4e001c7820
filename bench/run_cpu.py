#!/usr/bin/python3
"""CPU benchmark driver of lossytp (bench/run.sh calls it; run it with /usr/bin/python3).

Measures, in one run, on gpt-tiny (vocab 4096, seq 256, 4 layers, hidden 256, 4 heads,
micro-batch 8 = 2,048 tokens per step):
  - the sgemm peak of lossytp::cpu::sgemm at 1 and 2 threads (build/bench/bench_sgemm_peak);
  - lossytp, 1 rank, 1 thread           vs  PyTorch (bench/torch_gpt.py), 1 thread;
  - lossytp, 1 rank, 2 threads          vs  PyTorch, 2 threads            (information);
  - lossytp TP=2 on 2 ranks x 1 thread  vs  lossytp TP=1, 1 thread       (TP speed-up).
Each configuration runs `rounds` times, interleaved (A B C D E, A B C D E, ...), so a burst of
load from something else on the machine hits every configuration alike. A run's step time is the
median of its steps after the warm-up; a configuration's step time is the best (smallest) of its
runs' medians. Peak RSS comes from wait4() on the child (its own and its waited-for descendants'
max RSS: for mpirun that is the largest rank); for lossytp, VmHWM of every rank is also polled
from /proc as a cross-check.

The machine is shared (2 cores; others build and test on it), so:
  - before each run the driver waits, 1 s samples, until the rest of the machine uses < 0.25
    cores (at most --quiet-wait seconds over the whole benchmark);
  - while each run lasts, the CPU time that the rest of the machine used is recorded ("other
    load", in cores: busy time from /proc/stat minus the run's own CPU time, per wall second);
    a run with more than 0.25 cores of other load is flagged as noisy;
  - a configuration whose every run was noisy is run again (--retry-noisy times, not after
    --time-budget seconds).

Prints a Markdown table and writes a JSON file (default bench/results/latest.json).

--suite llama (bench/run.sh llama) measures instead, in one run:
  - lossytp --model llama-tiny, 1 rank x 1 thread  vs  transformers' LlamaForCausalLM (SDPA) on
    PyTorch 2.x (bench/torch_llama.py in the venv of bench/setup_torch_venv.sh), 1 thread, and
    vs the hand-written Llama on Debian's torch 1.13 (/usr/bin/python3) when that is installed;
  - lossytp llama-tiny TP=2 on 2 ranks x 1 thread (mpirun -np 2, or --tp2-launch virtual: one
    process, --virtual-ranks 2)  vs  lossytp TP=1, 1 thread;
  - lossytp gpt2-124m, 1 rank x 2 threads  vs  PyTorch 2.x bench/torch_gpt.py (SDPA) with the
    GPT-2 124M shape, 2 threads, at the SAME micro-batch (--gpt2-micro-batch, default 4;
    tokens/s and peak RSS). A GPT-2 step takes ~20 s on 2 cores: these runs have their own
    --gpt2-iters/--gpt2-warmup/--gpt2-rounds.
and writes bench/results/llama-latest.json.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISY_CORES = 0.25
TARGET_VS_TORCH = 1.2
TARGET_TP2 = 1.7
TARGET_LOSSY_STEP = 1.10   # TP=2 step under ge (ring mode) / TP=2 step under exact
LOSSY_NET = "ge:preset=one"


def parse_args():
    p = argparse.ArgumentParser(description="lossytp CPU benchmark (see bench/run.sh)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, few iterations")
    p.add_argument("--build-dir", default=os.path.join(REPO, "build"))
    p.add_argument("--build-status", default="unknown", help="recorded in the JSON (run.sh: built|skipped)")
    p.add_argument("--rounds", type=int, help="runs of each configuration (default 3; quick 1)")
    p.add_argument("--iters", type=int, help="training steps per run (default 25; quick 10)")
    p.add_argument("--warmup", type=int, help="steps left out of each median (default 5; quick 3)")
    p.add_argument("--json", default=os.path.join(REPO, "bench", "results", "latest.json"))
    p.add_argument("--quiet-wait", type=float,
                   help="seconds in all (default 150; quick 20) that the driver may spend, before "
                        "runs, waiting for other processes to leave the CPUs alone")
    p.add_argument("--retry-noisy", type=int,
                   help="extra runs (default 2; quick 0) of a configuration whose every run was "
                        "noisy, while the benchmark has run less than --time-budget seconds")
    p.add_argument("--time-budget", type=float, default=450.0,
                   help="no noisy re-runs start after this many seconds (default 450)")
    p.add_argument("--only", default="", help="comma list of configs to run: "
                   "lossytp-1t,torch-1t,lossytp-tp2,lossytp-tp2-ge,lossytp-2t,torch-2t; --suite llama: "
                   + ",".join(c["key"] for c in LLAMA_CONFIGS) + " (default: all)")
    p.add_argument("--suite", choices=["gpt", "llama"], default="gpt",
                   help="gpt (default): gpt-tiny against torch_gpt.py; llama: llama-tiny against "
                        "HF Llama, TP=2 vs TP=1, and gpt2-124m against torch 2.x (see the top)")
    g = p.add_argument_group("--suite llama")
    g.add_argument("--llama-model", default="llama-tiny",
                   help="lossytp preset of the Llama runs (its shape is passed to torch_llama.py)")
    g.add_argument("--gpt2-model", default="gpt2-124m",
                   help="lossytp preset of the 2-thread GPT-2 runs (gpt-tiny for a quick check)")
    g.add_argument("--gpt2-micro-batch", type=int, default=4,
                   help="micro-batch of both GPT-2 runs (default 4: PyTorch needs ~7.3 GiB there)")
    g.add_argument("--gpt2-iters", type=int, help="steps per GPT-2 run (default 6; quick 3)")
    g.add_argument("--gpt2-warmup", type=int, help="GPT-2 warm-up steps (default 2; quick 1)")
    g.add_argument("--gpt2-rounds", type=int, help="runs of each GPT-2 configuration (default 1)")
    g.add_argument("--torch2-python", default=os.path.join(
        os.environ.get("LOSSYTP_TORCH_VENV", os.path.expanduser("~/.cache/lossytp/venv-torch")), "bin", "python"),
        help="python of the PyTorch 2.x + transformers venv (bench/setup_torch_venv.sh)")
    g.add_argument("--torch113-python", default="/usr/bin/python3",
                   help="python with Debian's torch 1.13 (skipped when it cannot import torch)")
    g.add_argument("--tp2-launch", choices=["mpirun", "virtual"], default="mpirun",
                   help="TP=2 as 2 MPI processes (peak RSS per rank) or 2 virtual ranks in one process")
    a = p.parse_args()
    if a.suite == "llama":
        a.model = a.llama_model
        if a.json == os.path.join(REPO, "bench", "results", "latest.json"):
            a.json = os.path.join(REPO, "bench", "results", "llama-latest.json")
        a.gpt2_iters = a.gpt2_iters or (3 if a.quick else 6)
        a.gpt2_warmup = a.gpt2_warmup if a.gpt2_warmup is not None else (1 if a.quick else 2)
        a.gpt2_rounds = a.gpt2_rounds or 1
        if a.gpt2_iters <= a.gpt2_warmup:
            p.error("--gpt2-iters must be larger than --gpt2-warmup")
    else:
        a.model = "gpt-tiny"  # bench/torch_gpt.py's defaults are this preset's shape
    a.build_dir = os.path.abspath(a.build_dir)
    a.json = os.path.abspath(a.json)
    a.quiet_wait = a.quiet_wait if a.quiet_wait is not None else (20.0 if a.quick else 150.0)
    a.retry_noisy = a.retry_noisy if a.retry_noisy is not None else (0 if a.quick else 2)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.iters = a.iters or (10 if a.quick else 25)
    a.warmup = a.warmup if a.warmup is not None else (3 if a.quick else 5)
    if a.iters <= a.warmup:
        p.error("--iters must be larger than --warmup")
    return a


# ---------------------------------------------------------------------------------------------
# machine load and process accounting

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times():
    """(busy, steal) seconds summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def children_of():
    """{ppid: [pid, ...]} for every process."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        # comm may contain spaces: the fields after the last ')' are fixed
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid):
    kids, out, todo = children_of(), [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def vm_hwm_kib(pid):
    """(comm, executable path, VmHWM in KiB) of pid, or None."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        if exe.endswith(" (deleted)"):  # rebuilt while it ran
            exe = exe[:-len(" (deleted)")]
        with open(f"/proc/{pid}/status") as f:
            comm, hwm = None, None
            for line in f:
                if line.startswith("Name:"):
                    comm = line.split()[1]
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
            return (comm, exe, hwm) if hwm is not None else None
    except OSError:
        return None


def machine_load(seconds=1.0):
    """Cores busy on the whole machine over the next `seconds` (the driver itself sleeps)."""
    b0, _ = cpu_times()
    time.sleep(seconds)
    b1, _ = cpu_times()
    return (b1 - b0) / seconds


class QuietWaiter:
    """Before a run, waits (1 s samples) until the rest of the machine uses < NOISY_CORES cores,
    spending at most `budget` seconds over the whole benchmark."""

    def __init__(self, budget):
        self.budget, self.spent = budget, 0.0

    def __call__(self):
        t0 = time.monotonic()
        load = machine_load(0.5)
        while load >= NOISY_CORES and self.spent + (time.monotonic() - t0) < self.budget:
            load = machine_load(1.0)
        waited = time.monotonic() - t0
        self.spent += waited
        return {"waited_s": waited, "load_before_cores": load}


def run_measured(cmd, env, cwd, stdout_path, poll_exe=None):
    """Runs cmd to completion. Returns wall time, exit code, CPU time and max RSS from wait4,
    the other load on the machine while it ran, and the VmHWM of every process under it that
    runs the executable poll_exe (polled every 0.5 s: one entry per MPI rank)."""
    poll_exe = os.path.realpath(poll_exe) if poll_exe else None
    busy0, steal0 = cpu_times()
    t0 = time.monotonic()
    with open(stdout_path, "w") as out, open(stdout_path + ".err", "w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        hwm = {}
        status = ru = None
        while True:
            pid, st, r = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                status, ru = st, r
                break
            if poll_exe:
                for d in descendants(proc.pid) + [proc.pid]:
                    got = vm_hwm_kib(d)
                    if got and got[1] == poll_exe:
                        hwm[d] = max(hwm.get(d, 0), got[2])
            time.sleep(0.5)
    wall = time.monotonic() - t0
    busy1, steal1 = cpu_times()
    proc.returncode = os.waitstatus_to_exitcode(status)
    own_cpu = ru.ru_utime + ru.ru_stime
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "cpu_s": own_cpu,
        "cpu_util": own_cpu / wall if wall > 0 else 0.0,
        "wait4_maxrss_mib": ru.ru_maxrss / 1024.0,
        "polled_vmhwm_mib": sorted(v / 1024.0 for v in hwm.values()),
        "other_load_cores": max(0.0, (busy1 - busy0) - own_cpu) / wall if wall > 0 else 0.0,
        "steal_cores": (steal1 - steal0) / wall if wall > 0 else 0.0,
    }


def tail(path, n=15):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# the measurements

def base_env(threads):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
    env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    if threads > 1:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def sgemm_peak(build, threads, quick, workdir):
    exe = os.path.join(build, "bench", "bench_sgemm_peak")
    cmd = [exe, "--threads", str(threads)]
    if quick:
        cmd += ["--reps", "3", "--sizes", "1024,1536,2048"]
    out = os.path.join(workdir, f"sgemm{threads}.json")
    m = run_measured(cmd, base_env(threads), workdir, out)
    if m["rc"] != 0:
        raise RuntimeError(f"bench_sgemm_peak failed (rc {m['rc']}):\n{tail(out + '.err')}")
    with open(out) as f:
        res = json.load(f)
    res["other_load_cores"] = m["other_load_cores"]
    return res


def read_metrics(path, warmup):
    import h5py
    with h5py.File(path, "r") as f:
        steps = [float(x) for x in f["/train/step_time_s"][:]]
        n_params = int(f.attrs["num_parameters"])
        cfg = json.loads(f.attrs["config"])
    timed = steps[warmup:]
    return {"step_times_s": steps, "median_step_time_s": statistics.median(timed),
            "min_step_time_s": min(timed), "num_parameters": n_params,
            "tokens_per_step": int(cfg["global-batch-size"]) * int(cfg["seq-length"]),
            "config": cfg}


def run_lossytp(a, workdir, tag, ranks, threads, model=None, micro=None, iters=None, warmup=None,
                launch="mpirun"):
    """model/iters/warmup default to a's; micro: micro = global batch (default: the preset's);
    launch: mpirun (one process per rank) or virtual (--virtual-ranks, one process)."""
    exe = os.path.join(a.build_dir, "lossytp")
    run_dir = os.path.join(workdir, tag)
    os.makedirs(run_dir, exist_ok=True)
    iters = iters or a.iters
    warmup = a.warmup if warmup is None else warmup
    train = [exe, "train", "--model", model or a.model, "--threads", str(threads),
             "--train-iters", str(iters), "--eval-iters", "0", "--log-interval", "5",
             "--quiet", "--out", os.path.join(run_dir, "out"), "--overwrite"]
    if micro:
        train += ["--micro-batch-size", str(micro), "--global-batch-size", str(micro)]
    if tag.startswith("lossytp-tp2-ge"):
        train += ["--net", LOSSY_NET]
    if ranks > 1:
        train += ["--tensor-model-parallel-size", str(ranks)]
        if launch == "virtual":
            cmd = train + ["--virtual-ranks", str(ranks)]
        else:
            cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks)] + train
    else:
        cmd = train  # singleton MPI
    m = run_measured(cmd, base_env(threads), run_dir, os.path.join(run_dir, "stdout.txt"),
                     poll_exe=exe)
    if m["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {m['rc']}):\n"
                           f"{tail(os.path.join(run_dir, 'stdout.txt.err'))}")
    r = read_metrics(os.path.join(run_dir, "out", "metrics.h5"), warmup)
    r["lossytp_config"] = r.pop("config")
    r.update(m)
    # peak RSS per rank: wait4's max RSS of the child's tree, i.e. of the largest rank (mpirun and
    # orted are far smaller); polled_vmhwm_mib holds every rank's own VmHWM as a cross-check.
    r["peak_rss_mib"] = m["wait4_maxrss_mib"]
    r["command"] = " ".join(cmd)
    return r


def run_torch(a, workdir, tag, threads, python="/usr/bin/python3", script="torch_gpt.py", extra=(),
              iters=None, warmup=None):
    run_dir = os.path.join(workdir, tag)
    os.makedirs(run_dir, exist_ok=True)
    cmd = [python, os.path.join(REPO, "bench", script), "--threads", str(threads),
           "--iters", str(iters or a.iters), "--warmup", str(a.warmup if warmup is None else warmup)]
    cmd += list(extra)
    out = os.path.join(run_dir, "stdout.txt")
    m = run_measured(cmd, base_env(threads), run_dir, out)
    if m["rc"] != 0:
        raise RuntimeError(f"{script} failed (rc {m['rc']}):\n{tail(out + '.err')}")
    with open(out) as f:
        r = json.loads(f.read().strip().splitlines()[-1])
    r["self_reported_peak_rss_mib"] = r.pop("peak_rss_mib")
    r.update(m)
    r["peak_rss_mib"] = m["wait4_maxrss_mib"]
    r["command"] = " ".join(cmd)
    return r


CONFIGS = [
    # key, label, kind, ranks, threads per rank, cores used
    ("lossytp-1t", "lossytp TP=1, 1 rank x 1 thread", "lossytp", 1, 1),
    ("torch-1t", "PyTorch, 1 thread", "torch", 1, 1),
    ("lossytp-tp2", "lossytp TP=2, 2 ranks x 1 thread", "lossytp", 2, 1),
    ("lossytp-tp2-ge", f"lossytp TP=2 under {LOSSY_NET} (ring)", "lossytp", 2, 1),
    ("lossytp-2t", "lossytp TP=1, 1 rank x 2 threads", "lossytp", 1, 2),
    ("torch-2t", "PyTorch, 2 threads", "torch", 1, 2),
]


def summarise(runs, flops_per_step):
    """A configuration's figure: the run with the smallest median step time."""
    best = min(runs, key=lambda r: r["median_step_time_s"])
    step = best["median_step_time_s"]
    tokens = best["tokens_per_step"]
    return {
        "step_time_s": step,
        "tokens_per_second": tokens / step,
        "model_gflops": flops_per_step / step / 1e9,
        "run_medians_s": [r["median_step_time_s"] for r in runs],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "other_load_cores": best["other_load_cores"],
        "max_other_load_cores": max(r["other_load_cores"] for r in runs),
        "cpu_util": best["cpu_util"],
        "noisy": best["other_load_cores"] > NOISY_CORES,
    }


def git_state():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def fmt_ok(ok):
    return "MET" if ok else "NOT MET"


def main():
    a = parse_args()
    if a.suite == "llama":
        return main_llama(a)
    only = set(x for x in a.only.split(",") if x) or {c[0] for c in CONFIGS}
    unknown = only - {c[0] for c in CONFIGS}
    if unknown:
        sys.exit(f"run_cpu.py: unknown --only configuration(s): {', '.join(sorted(unknown))}")
    configs = [c for c in CONFIGS if c[0] in only]
    workdir = tempfile.mkdtemp(prefix="lossytp-bench-")
    t_begin = time.monotonic()
    log = lambda msg: print(f"[{time.monotonic() - t_begin:6.1f}s] {msg}", file=sys.stderr, flush=True)
    try:
        log(f"sgemm peak (1 and 2 threads); work dir {workdir}")
        wait_quiet = QuietWaiter(a.quiet_wait)
        peak = {}
        for n in (1, 2):
            wait_quiet()
            peak[n] = sgemm_peak(a.build_dir, n, a.quick, workdir)
        runs = {c[0]: [] for c in configs}

        def one_run(key, label, kind, ranks, threads, tag, what):
            log(f"{what}: {label}, {a.iters} steps")
            q = wait_quiet()
            if q["waited_s"] > 1.0:
                log(f"    waited {q['waited_s']:.0f} s for other processes (load now {q['load_before_cores']:.2f} cores)")
            if kind == "lossytp":
                r = run_lossytp(a, workdir, tag, ranks, threads)
            else:
                r = run_torch(a, workdir, tag, threads)
            noisy = r["other_load_cores"] > NOISY_CORES
            log(f"    median step {r['median_step_time_s'] * 1e3:.1f} ms, "
                f"peak RSS {r['peak_rss_mib']:.0f} MiB, CPU use {r['cpu_util']:.2f} cores, "
                f"other load {r['other_load_cores']:.2f} cores{' (noisy)' if noisy else ''}")
            r.update(q)
            runs[key].append(r)

        for rnd in range(a.rounds):
            for c in configs:
                one_run(*c, tag=f"{c[0]}-r{rnd}", what=f"round {rnd + 1}/{a.rounds}")
        for extra in range(a.retry_noisy):
            for c in configs:
                if time.monotonic() - t_begin > a.time_budget:
                    break
                if all(r["other_load_cores"] > NOISY_CORES for r in runs[c[0]]):
                    one_run(*c, tag=f"{c[0]}-x{extra}", what=f"re-run {extra + 1} (all runs were noisy)")
    finally:
        elapsed = time.monotonic() - t_begin

    # model FLOPs per step, as lossytp counts them: (6 N + 12 L T d) per token, N without wpe
    ref = next(iter(runs.values()))[0]
    n_params = ref["num_parameters"]
    T, d, L = 256, 256, 4
    if "lossytp-1t" in runs:
        cfg = read_metrics(os.path.join(workdir, "lossytp-1t-r0", "out", "metrics.h5"), a.warmup)["config"]
        T, d, L = cfg["seq-length"], cfg["hidden-size"], cfg["num-layers"]
    flops_per_token = 6.0 * (n_params - T * d) + 12.0 * L * T * d
    flops_per_step = flops_per_token * ref["tokens_per_step"]

    summary = {k: summarise(v, flops_per_step) for k, v in runs.items()}
    cores = {c[0]: c[3] * c[4] for c in configs}
    for k, s in summary.items():
        s["cores"] = cores[k]
        s["fraction_of_sgemm_peak"] = s["model_gflops"] / peak[min(2, cores[k])]["median_gflops"]

    targets = {}
    if {"lossytp-1t", "torch-1t"} <= summary.keys():
        ratio = summary["lossytp-1t"]["tokens_per_second"] / summary["torch-1t"]["tokens_per_second"]
        targets["lossytp_vs_pytorch_1t"] = {"value": ratio, "target": TARGET_VS_TORCH,
                                            "met": ratio >= TARGET_VS_TORCH}
        mem_l, mem_t = summary["lossytp-1t"]["peak_rss_mib"], summary["torch-1t"]["peak_rss_mib"]
        targets["peak_rss_vs_pytorch_1t"] = {"value": mem_l / mem_t, "lossytp_mib": mem_l,
                                             "pytorch_mib": mem_t, "target": 1.0, "met": mem_l <= mem_t}
    if {"lossytp-1t", "lossytp-tp2"} <= summary.keys():
        sp = summary["lossytp-tp2"]["tokens_per_second"] / summary["lossytp-1t"]["tokens_per_second"]
        targets["tp2_speedup"] = {"value": sp, "target": TARGET_TP2, "met": sp >= TARGET_TP2}
    if {"lossytp-tp2", "lossytp-tp2-ge"} <= summary.keys():
        r = summary["lossytp-tp2-ge"]["step_time_s"] / summary["lossytp-tp2"]["step_time_s"]
        targets["lossy_step_vs_exact_tp2"] = {"value": r, "target": TARGET_LOSSY_STEP,
                                              "met": r <= TARGET_LOSSY_STEP}
    info = {}
    if {"lossytp-2t", "torch-2t"} <= summary.keys():
        info["lossytp_vs_pytorch_2t"] = (summary["lossytp-2t"]["tokens_per_second"] /
                                         summary["torch-2t"]["tokens_per_second"])
    if {"lossytp-1t", "lossytp-2t"} <= summary.keys():
        info["lossytp_2t_vs_1t"] = (summary["lossytp-2t"]["tokens_per_second"] /
                                    summary["lossytp-1t"]["tokens_per_second"])
    if {"torch-1t", "torch-2t"} <= summary.keys():
        info["pytorch_2t_vs_1t"] = (summary["torch-2t"]["tokens_per_second"] /
                                    summary["torch-1t"]["tokens_per_second"])

    torch_ver = next((r[0].get("torch_version") for k, r in runs.items() if k.startswith("torch")), None)
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "quick" if a.quick else "full",
        "git": git_state(),
        "build": a.build_status,
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "kernel": platform.release(),
                    "loadavg_at_end": os.getloadavg()},
        "model": a.model, "tokens_per_step": ref["tokens_per_step"], "num_parameters": n_params,
        "flops_per_token": flops_per_token, "flops_per_step": flops_per_step,
        "iters": a.iters, "warmup": a.warmup, "rounds": a.rounds, "torch_version": torch_ver,
        "sgemm_peak": {str(k): v for k, v in peak.items()},
        "summary": summary, "targets": targets, "info": info,
        "runs": runs, "elapsed_s": elapsed,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)

    # ---- report
    p1, p2 = peak[1]["median_gflops"], peak[2]["median_gflops"]
    print()
    print(f"lossytp CPU benchmark, {result['mode']} mode, {result['date']}, git {result['git']}"
          + (" (binaries NOT rebuilt)" if a.build_status == "skipped" else ""))
    print(f"{result['machine']['cpu']}, {os.cpu_count()} CPUs; model {a.model}: "
          f"{ref['tokens_per_step']} tokens/step, {flops_per_step / 1e9:.1f} GFLOP/step "
          f"({flops_per_token / 1e6:.1f} MFLOP/token)")
    print(f"{a.rounds} round(s) x {a.iters} steps, median after {a.warmup} warm-up steps, "
          f"best run of each configuration; PyTorch {torch_ver}")
    print(f"sgemm peak (lossytp::cpu::sgemm, square N=1024..2048, median): "
          f"1 thread {p1:.1f} GFLOP/s, 2 threads {p2:.1f} GFLOP/s")
    print()
    print("| run | cores | step time (ms) | tokens/s | model GFLOP/s | of sgemm peak | peak RSS/rank (MiB) | other load (cores) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, label, *_ in configs:
        s = summary[key]
        flag = " (noisy)" if s["noisy"] else ""
        print(f"| {label} | {s['cores']} | {s['step_time_s'] * 1e3:.0f} | {s['tokens_per_second']:,.0f} | "
              f"{s['model_gflops']:.1f} | {100 * s['fraction_of_sgemm_peak']:.0f} % | "
              f"{s['peak_rss_mib']:.0f} | {s['other_load_cores']:.2f}{flag} |")
    print()
    def noisy(*keys):
        return "  [noisy input: re-run]" if any(summary[k]["noisy"] for k in keys) else ""

    if "lossytp_vs_pytorch_1t" in targets:
        t = targets["lossytp_vs_pytorch_1t"]
        print(f"lossytp / PyTorch tokens/s, 1 thread:    {t['value']:.2f}x  (target >= {t['target']}x)  "
              f"{fmt_ok(t['met'])}{noisy('lossytp-1t', 'torch-1t')}")
    if "tp2_speedup" in targets:
        t = targets["tp2_speedup"]
        print(f"TP=2 (2 ranks) / TP=1 (1 thread):        {t['value']:.2f}x  (target >= {t['target']}x)  "
              f"{fmt_ok(t['met'])}{noisy('lossytp-1t', 'lossytp-tp2')}")
    if "lossy_step_vs_exact_tp2" in targets:
        t = targets["lossy_step_vs_exact_tp2"]
        print(f"TP=2 step under {LOSSY_NET} / exact:  {t['value']:.2f}x  (target <= {t['target']}x)  "
              f"{fmt_ok(t['met'])}{noisy('lossytp-tp2', 'lossytp-tp2-ge')}")
    if "peak_rss_vs_pytorch_1t" in targets:
        t = targets["peak_rss_vs_pytorch_1t"]
        print(f"peak RSS lossytp / PyTorch, 1 thread:    {t['lossytp_mib']:.0f} / {t['pytorch_mib']:.0f} MiB "
              f"= {t['value']:.2f}  (target <= 1)  {fmt_ok(t['met'])}")
    if "lossytp_vs_pytorch_2t" in info:
        print(f"lossytp / PyTorch tokens/s, 2 threads:   {info['lossytp_vs_pytorch_2t']:.2f}x  (information)"
              f"{noisy('lossytp-2t', 'torch-2t')}")
    if any(s["noisy"] for s in summary.values()):
        print(f"\nWARNING: some figures were measured while other processes used > {NOISY_CORES} cores "
              "(see 'other load'); re-run when the machine is idle.")
    masks_exe = os.path.join(a.build_dir, "bench", "bench_netmodel_masks")
    if os.path.exists(masks_exe):
        print("\nNetwork-model masks, one core (build/bench/bench_netmodel_masks):")
        out = subprocess.run([masks_exe, "20000000" if a.quick else "100000000"], capture_output=True,
                             text=True, env=base_env(1)).stdout
        print("\n".join("  " + l for l in out.splitlines() if l.strip()))
    print(f"\n{elapsed:.0f} s in all; results in {os.path.relpath(a.json, os.getcwd())}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


# ---------------------------------------------------------------------------------------------
# --suite llama

LLAMA_CONFIGS = [
    # group llama: a.rounds runs each, a.iters steps; group gpt2: a.gpt2_rounds runs, a.gpt2_iters
    {"key": "lossytp-llama-1t", "kind": "lossytp", "group": "llama", "ranks": 1, "threads": 1},
    {"key": "torch2-llama-1t", "kind": "torch2", "group": "llama", "ranks": 1, "threads": 1},
    {"key": "torch113-llama-1t", "kind": "torch113", "group": "llama", "ranks": 1, "threads": 1},
    {"key": "lossytp-llama-tp2", "kind": "lossytp", "group": "llama", "ranks": 2, "threads": 1},
    {"key": "lossytp-gpt2-2t", "kind": "lossytp", "group": "gpt2", "ranks": 1, "threads": 2},
    {"key": "torch2-gpt2-2t", "kind": "torch2", "group": "gpt2", "ranks": 1, "threads": 2},
]


def lossytp_plan(a, model, micro=None):
    """`lossytp train --dry-run --json` of a preset: its resolved config and FLOPs per token."""
    cmd = [os.path.join(a.build_dir, "lossytp"), "train", "--model", model, "--dry-run", "--json"]
    if micro:
        cmd += ["--micro-batch-size", str(micro), "--global-batch-size", str(micro)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=base_env(1))
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {r.returncode}):\n{r.stderr[-2000:]}")
    return json.loads(r.stdout)


def torch_llama_args(cfg):
    """bench/torch_llama.py flags for a lossytp Llama config (the same shape and parts)."""
    need = {"normalization": "RMSNorm", "position-embedding-type": "rope", "swiglu": True,
            "disable-bias-linear": True, "untie-embeddings-and-output-weights": True,
            "rotary-percent": 1.0}
    bad = {k: cfg[k] for k, v in need.items() if cfg[k] != v}
    if bad:
        raise ValueError(f"--llama-model {cfg['model']} is not a Llama that torch_llama.py builds: {bad}")
    return ["--vocab-size", str(cfg["padded-vocab-size"]), "--seq-length", str(cfg["seq-length"]),
            "--num-layers", str(cfg["num-layers"]), "--hidden-size", str(cfg["hidden-size"]),
            "--num-attention-heads", str(cfg["num-attention-heads"]),
            "--num-query-groups", str(cfg["num-query-groups"]),
            "--ffn-hidden-size", str(cfg["ffn-hidden-size"]), "--norm-epsilon", str(cfg["norm-epsilon"]),
            "--rotary-base", str(cfg["rotary-base"]), "--micro-batch-size", str(cfg["micro-batch-size"])]


def torch_gpt_args(cfg):
    """bench/torch_gpt.py flags for a lossytp GPT-2 config. The vocabulary is the padded one:
    lossytp's tables and logits GEMM have that many rows (nanoGPT's 50304 for GPT-2)."""
    need = {"normalization": "LayerNorm", "position-embedding-type": "learned_absolute",
            "swiglu": False, "disable-bias-linear": False, "untie-embeddings-and-output-weights": False}
    bad = {k: cfg[k] for k, v in need.items() if cfg[k] != v}
    if bad or cfg["ffn-hidden-size"] != 4 * cfg["hidden-size"] or cfg["num-query-groups"] != cfg["num-attention-heads"]:
        raise ValueError(f"--gpt2-model {cfg['model']} is not a GPT-2 that torch_gpt.py builds: {bad}")
    return ["--vocab-size", str(cfg["padded-vocab-size"]), "--seq-length", str(cfg["seq-length"]),
            "--num-layers", str(cfg["num-layers"]), "--hidden-size", str(cfg["hidden-size"]),
            "--num-attention-heads", str(cfg["num-attention-heads"]),
            "--micro-batch-size", str(cfg["micro-batch-size"])]


def python_torch(python, need_transformers=False):
    """torch (and transformers) versions importable by `python`, or None."""
    if not python or not os.path.exists(python):
        return None
    code = "import torch; v = torch.__version__"
    code += "; import transformers; v += ' / transformers ' + transformers.__version__" if need_transformers else ""
    r = subprocess.run([python, "-c", code + "; print(v)"], capture_output=True, text=True,
                       env=base_env(1))
    return r.stdout.strip() if r.returncode == 0 else None


def main_llama(a):
    keys = [c["key"] for c in LLAMA_CONFIGS]
    only = set(x for x in a.only.split(",") if x) or set(keys)
    unknown = only - set(keys)
    if unknown:
        sys.exit(f"run_cpu.py: unknown --only configuration(s) of --suite llama: {', '.join(sorted(unknown))}")
    t_begin = time.monotonic()
    log = lambda msg: print(f"[{time.monotonic() - t_begin:6.1f}s] {msg}", file=sys.stderr, flush=True)

    # the peers that exist here
    skipped = {}
    torch2 = python_torch(a.torch2_python, need_transformers=True)
    torch113 = python_torch(a.torch113_python)
    if torch2 is None:
        for k in ("torch2-llama-1t", "torch2-gpt2-2t"):
            skipped[k] = (f"{a.torch2_python} cannot import torch and transformers "
                          "(run bench/setup_torch_venv.sh)")
    if torch113 is None:
        skipped["torch113-llama-1t"] = f"{a.torch113_python} cannot import torch (apt-get install python3-torch)"
    elif torch2 and torch113 == torch2.split(" ")[0]:
        skipped["torch113-llama-1t"] = f"{a.torch113_python} has the same torch as the 2.x peer ({torch113})"
    configs = [dict(c) for c in LLAMA_CONFIGS if c["key"] in only and c["key"] not in skipped]
    for k in sorted(only & set(skipped)):
        log(f"skipping {k}: {skipped[k]}")

    # the shapes, from lossytp itself
    llama_plan = lossytp_plan(a, a.llama_model)
    gpt2_plan = lossytp_plan(a, a.gpt2_model, a.gpt2_micro_batch)
    llama_args = torch_llama_args(llama_plan["config"])
    gpt2_args = torch_gpt_args(gpt2_plan["config"]) + ["--sdpa", "on"]
    M = a.gpt2_micro_batch
    for c in configs:
        llama = c["group"] == "llama"
        c["model"] = a.llama_model if llama else a.gpt2_model
        c["iters"], c["warmup"] = (a.iters, a.warmup) if llama else (a.gpt2_iters, a.gpt2_warmup)
        c["rounds"] = a.rounds if llama else a.gpt2_rounds
        c["cores"] = c["ranks"] * c["threads"]
        t = f"{c['threads']} thread{'s' if c['threads'] > 1 else ''}"
        if c["kind"] == "lossytp":
            par = f"TP={c['ranks']}, {c['ranks']} ranks x {t}" if c["ranks"] > 1 else f"TP=1, 1 rank x {t}"
            c["label"] = f"lossytp {c['model']} {par}" + ("" if llama else f", micro-batch {M}")
        elif c["kind"] == "torch2":
            c["python"], c["version"] = a.torch2_python, torch2
            if llama:
                c["script"], c["extra"] = "torch_llama.py", llama_args + ["--impl", "hf"]
                c["label"] = f"PyTorch {torch2.split(' ')[0]} HF LlamaForCausalLM (SDPA), {t}"
            else:
                c["script"], c["extra"] = "torch_gpt.py", gpt2_args
                c["label"] = f"PyTorch {torch2.split(' ')[0]} torch_gpt.py (SDPA), {t}, micro-batch {M}"
        else:
            c["python"], c["version"] = a.torch113_python, torch113
            c["script"], c["extra"] = "torch_llama.py", llama_args + ["--impl", "hand"]
            c["label"] = f"PyTorch {torch113} hand-written Llama, {t}"
    if not configs:
        sys.exit("run_cpu.py: nothing to run")

    workdir = tempfile.mkdtemp(prefix="lossytp-bench-llama-")
    runs = {c["key"]: [] for c in configs}
    failures = {}
    wait_quiet = QuietWaiter(a.quiet_wait)
    log(f"sgemm peak (1 and 2 threads); work dir {workdir}")
    peak = {}
    for n in (1, 2):
        wait_quiet()
        peak[n] = sgemm_peak(a.build_dir, n, a.quick, workdir)

    def one_run(c, tag, what):
        log(f"{what}: {c['label']}, {c['iters']} steps")
        q = wait_quiet()
        if q["waited_s"] > 1.0:
            log(f"    waited {q['waited_s']:.0f} s for other processes (load now {q['load_before_cores']:.2f} cores)")
        try:
            if c["kind"] == "lossytp":
                r = run_lossytp(a, workdir, tag, c["ranks"], c["threads"], model=c["model"],
                                micro=None if c["group"] == "llama" else M, iters=c["iters"],
                                warmup=c["warmup"], launch=a.tp2_launch)
            else:
                r = run_torch(a, workdir, tag, c["threads"], python=c["python"], script=c["script"],
                              extra=c["extra"], iters=c["iters"], warmup=c["warmup"])
        except RuntimeError as e:
            log(f"    FAILED: {e}")
            failures.setdefault(c["key"], []).append(str(e)[-3000:])
            return
        noisy = r["other_load_cores"] > NOISY_CORES
        log(f"    median step {r['median_step_time_s'] * 1e3:.1f} ms, "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB, CPU use {r['cpu_util']:.2f} cores, "
            f"other load {r['other_load_cores']:.2f} cores{' (noisy)' if noisy else ''}")
        r.update(q)
        runs[c["key"]].append(r)

    try:
        for rnd in range(max(c["rounds"] for c in configs)):
            for c in configs:
                if rnd < c["rounds"]:
                    one_run(c, f"{c['key']}-r{rnd}", f"round {rnd + 1}/{c['rounds']}")
        for extra in range(a.retry_noisy):  # the short (llama) runs only
            for c in configs:
                if c["group"] != "llama" or time.monotonic() - t_begin > a.time_budget:
                    continue
                if runs[c["key"]] and all(r["other_load_cores"] > NOISY_CORES for r in runs[c["key"]]):
                    one_run(c, f"{c['key']}-x{extra}", f"re-run {extra + 1} (all runs were noisy)")
    finally:
        elapsed = time.monotonic() - t_begin

    plans = {"llama": llama_plan, "gpt2": gpt2_plan}
    summary = {}
    for c in configs:
        if not runs[c["key"]]:
            continue
        tokens = runs[c["key"]][0]["tokens_per_step"]
        s_ = summarise(runs[c["key"]], plans[c["group"]]["flops_per_token"] * tokens)
        s_.update(cores=c["cores"], label=c["label"], model=c["model"], group=c["group"],
                  tokens_per_step=tokens)
        s_["fraction_of_sgemm_peak"] = s_["model_gflops"] / peak[min(2, c["cores"])]["median_gflops"]
        if c["kind"] != "lossytp":
            s_["peer_version"] = c["version"]
        summary[c["key"]] = s_

    def ratio(k1, k2, field="tokens_per_second"):
        return summary[k1][field] / summary[k2][field] if {k1, k2} <= summary.keys() else None

    targets, info = {}, {}
    v = ratio("lossytp-llama-1t", "torch2-llama-1t")
    if v is not None:
        targets["llama_lossytp_vs_hf_torch2_1t"] = {"value": v, "target": TARGET_VS_TORCH, "met": v >= TARGET_VS_TORCH}
        m = ratio("lossytp-llama-1t", "torch2-llama-1t", "peak_rss_mib")
        targets["llama_peak_rss_vs_hf_torch2_1t"] = {
            "value": m, "lossytp_mib": summary["lossytp-llama-1t"]["peak_rss_mib"],
            "pytorch_mib": summary["torch2-llama-1t"]["peak_rss_mib"], "target": 1.0, "met": m <= 1.0}
    v = ratio("lossytp-llama-tp2", "lossytp-llama-1t")
    if v is not None:
        targets["llama_tp2_speedup"] = {"value": v, "target": TARGET_TP2, "met": v >= TARGET_TP2,
                                        "launch": a.tp2_launch}
    v = ratio("lossytp-llama-1t", "torch113-llama-1t")
    if v is not None:
        info["llama_lossytp_vs_torch113_hand_1t"] = v
    v = ratio("lossytp-gpt2-2t", "torch2-gpt2-2t")
    if v is not None:
        info["gpt2_lossytp_vs_torch2_2t"] = v
        info["gpt2_peak_rss_lossytp_vs_torch2_2t"] = ratio("lossytp-gpt2-2t", "torch2-gpt2-2t", "peak_rss_mib")

    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "suite": "llama", "mode": "quick" if a.quick else "full", "git": git_state(), "build": a.build_status,
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "kernel": platform.release(),
                    "loadavg_at_end": os.getloadavg()},
        "llama_model": a.llama_model, "gpt2_model": a.gpt2_model, "gpt2_micro_batch": M,
        "flops_per_token": {g: p["flops_per_token"] for g, p in plans.items()},
        "lossytp_config": {g: p["config"] for g, p in plans.items()},
        "iters": a.iters, "warmup": a.warmup, "rounds": a.rounds,
        "gpt2_iters": a.gpt2_iters, "gpt2_warmup": a.gpt2_warmup, "gpt2_rounds": a.gpt2_rounds,
        "tp2_launch": a.tp2_launch, "peers": {"torch2": torch2, "torch113": torch113},
        "sgemm_peak": {str(k): v for k, v in peak.items()},
        "summary": summary, "targets": targets, "info": info, "skipped": skipped, "failures": failures,
        "runs": runs, "elapsed_s": elapsed,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)

    # ---- report
    print()
    print(f"lossytp CPU benchmark, llama suite, {result['mode']} mode, {result['date']}, git {result['git']}"
          + (" (binaries NOT rebuilt)" if a.build_status == "skipped" else ""))
    print(f"{result['machine']['cpu']}, {os.cpu_count()} CPUs; {a.llama_model}: "
          f"{llama_plan['flops_per_token'] / 1e6:.1f} MFLOP/token; {a.gpt2_model} at micro-batch {M}: "
          f"{gpt2_plan['flops_per_token'] / 1e6:.1f} MFLOP/token")
    print(f"Llama runs: {a.rounds} round(s) x {a.iters} steps, median after {a.warmup}; GPT-2 runs: "
          f"{a.gpt2_rounds} x {a.gpt2_iters} steps, median after {a.gpt2_warmup}; best run of each")
    print(f"sgemm peak: 1 thread {peak[1]['median_gflops']:.1f} GFLOP/s, 2 threads {peak[2]['median_gflops']:.1f} GFLOP/s")
    print()
    print("| run | cores | step time (ms) | tokens/s | model GFLOP/s | of sgemm peak | peak RSS/process (MiB) | other load (cores) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in configs:
        if c["key"] not in summary:
            print(f"| {c['label']} | {c['cores']} | FAILED | | | | | |")
            continue
        s_ = summary[c["key"]]
        print(f"| {c['label']} | {s_['cores']} | {s_['step_time_s'] * 1e3:.0f} | {s_['tokens_per_second']:,.0f} | "
              f"{s_['model_gflops']:.1f} | {100 * s_['fraction_of_sgemm_peak']:.0f} % | "
              f"{s_['peak_rss_mib']:.0f} | {s_['other_load_cores']:.2f}{' (noisy)' if s_['noisy'] else ''} |")
    print()

    def noisy(*ks):
        return "  [noisy input: re-run]" if any(summary[k]["noisy"] for k in ks) else ""

    t = targets.get("llama_lossytp_vs_hf_torch2_1t")
    if t:
        print(f"{a.llama_model}: lossytp / HF Llama (torch 2.x) tokens/s, 1 thread: {t['value']:.2f}x  "
              f"(target >= {t['target']}x)  {fmt_ok(t['met'])}{noisy('lossytp-llama-1t', 'torch2-llama-1t')}")
        t = targets["llama_peak_rss_vs_hf_torch2_1t"]
        print(f"{a.llama_model}: peak RSS lossytp / HF Llama, 1 thread: {t['lossytp_mib']:.0f} / "
              f"{t['pytorch_mib']:.0f} MiB = {t['value']:.2f}  (target <= 1)  {fmt_ok(t['met'])}")
    if "llama_lossytp_vs_torch113_hand_1t" in info:
        print(f"{a.llama_model}: lossytp / hand-written Llama (torch {torch113}), 1 thread: "
              f"{info['llama_lossytp_vs_torch113_hand_1t']:.2f}x  (information)")
    t = targets.get("llama_tp2_speedup")
    if t:
        print(f"{a.llama_model}: TP=2 (2 ranks, {a.tp2_launch}) / TP=1 (1 thread): {t['value']:.2f}x  "
              f"(target >= {t['target']}x)  {fmt_ok(t['met'])}{noisy('lossytp-llama-1t', 'lossytp-llama-tp2')}")
    if "gpt2_lossytp_vs_torch2_2t" in info:
        print(f"{a.gpt2_model}, micro-batch {M}, 2 threads: lossytp / PyTorch 2.x tokens/s "
              f"{info['gpt2_lossytp_vs_torch2_2t']:.2f}x; peak RSS "
              f"{summary['lossytp-gpt2-2t']['peak_rss_mib']:.0f} / {summary['torch2-gpt2-2t']['peak_rss_mib']:.0f} MiB "
              f"= {info['gpt2_peak_rss_lossytp_vs_torch2_2t']:.2f}  (information)"
              f"{noisy('lossytp-gpt2-2t', 'torch2-gpt2-2t')}")
    for k, why in skipped.items():
        if k in only:
            print(f"skipped {k}: {why}")
    for k, errs in failures.items():
        print(f"FAILED {k} ({len(errs)} run(s)); last error:\n{errs[-1]}")
    if any(s_["noisy"] for s_ in summary.values()):
        print(f"\nWARNING: some figures were measured while other processes used > {NOISY_CORES} cores "
              "(see 'other load'); re-run when the machine is idle.")
    print(f"\n{elapsed:.0f} s in all; results in {os.path.relpath(a.json, os.getcwd())}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
