#!/usr/bin/python3
"""lossytp GPU benchmark (bench/run_gpu.sh drives it).

Measures, in one run on one GPU:
  - the bf16 GEMM peak of the GPU (bench_gemm_peak_bf16, cuBLAS, best of several sizes);
  - lossytp `gpt2-124m`, --bf16, micro-batch 16, TP=1: tokens/s and MFU against that peak
    (model FLOPs per token 6 N + 12 L T d, N without position embeddings);
  - the same model in PyTorch eager (bench/torch_gpt.py --device cuda --bf16: autocast bf16,
    fp32 master weights, SDPA attention when torch has it) on the same GPU;
  - lossytp fp32 (information: the path compared with the CPU).
Prints a table and writes bench/results/gpu-latest.json (date, GPU name, every number).
Targets (issue 5): MFU >= 50 % and lossytp tokens/s >= PyTorch eager's.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2 = {"vocab_size": 50304, "seq_length": 1024, "num_layers": 12, "hidden_size": 768,
        "num_attention_heads": 12}


def parse_args():
    p = argparse.ArgumentParser(description="lossytp GPU benchmark (see bench/run_gpu.sh)")
    p.add_argument("--build-dir", default=os.path.join(REPO, "build"))
    p.add_argument("--iters", type=int, default=30, help="training steps per run")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of each median")
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--torch-python", default=os.environ.get("TORCH_PYTHON", sys.executable),
                   help="python with a CUDA build of torch for the peer (env TORCH_PYTHON)")
    p.add_argument("--skip-fp32", action="store_true", help="leave out the lossytp fp32 run")
    p.add_argument("--json", default=os.path.join(REPO, "bench", "results", "gpu-latest.json"))
    return p.parse_args()


def flops_per_token(n_params, cfg=GPT2):
    T, d, L = cfg["seq_length"], cfg["hidden_size"], cfg["num_layers"]
    return 6.0 * (n_params - T * d) + 12.0 * L * T * d


def run(cmd, **kw):
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def gemm_peak(a):
    r = run([os.path.join(a.build_dir, "bench", "bench_gemm_peak_bf16")])
    if r.returncode == 77:
        sys.exit("bench/run_gpu.sh: no CUDA GPU on this machine: " + r.stdout.strip())
    if r.returncode != 0:
        sys.exit("bench_gemm_peak_bf16 failed:\n" + r.stderr)
    return json.loads(r.stdout)


def run_lossytp(a, tag, bf16):
    import h5py
    out = os.path.join(REPO, "bench", "results", "gpu-runs", tag)
    cmd = [os.path.join(a.build_dir, "lossytp"), "train", "--model", "gpt2-124m", "--device", "cuda",
           "--micro-batch-size", str(a.micro_batch_size), "--train-iters", str(a.iters),
           "--eval-iters", "0", "--log-interval", "5", "--lr-warmup-iters", "2",
           "--out", out, "--overwrite", "--quiet"] + (["--bf16"] if bf16 else [])
    r = run(cmd)
    if r.returncode != 0:
        return {"error": f"rc {r.returncode}: {(r.stderr or r.stdout)[-2000:]}", "command": " ".join(cmd)}
    with h5py.File(os.path.join(out, "metrics.h5"), "r") as f:
        steps = [float(x) for x in f["/train/step_time_s"][:]]
        losses = [float(x) for x in f["/train/loss"][:]]
        n_params = int(f.attrs["num_parameters"])
    step = statistics.median(steps[a.warmup:])
    tokens = a.micro_batch_size * GPT2["seq_length"]
    return {"command": " ".join(cmd), "median_step_time_s": step, "tokens_per_second": tokens / step,
            "num_parameters": n_params, "flops_per_token": flops_per_token(n_params),
            "first_loss": losses[0], "last_loss": losses[-1], "step_times_s": steps}


def run_torch(a):
    cmd = [a.torch_python, os.path.join(REPO, "bench", "torch_gpt.py"), "--device", "cuda", "--bf16",
           "--iters", str(a.iters), "--warmup", str(a.warmup),
           "--micro-batch-size", str(a.micro_batch_size)]
    for k, v in GPT2.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    r = run(cmd)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip()[-2000:], "command": " ".join(cmd)}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["command"] = " ".join(cmd)
    return res


def main():
    a = parse_args()
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    peak = gemm_peak(a)
    peak_flops = peak["peak_bf16_tflops"] * 1e12
    res = {"date": datetime.date.today().isoformat(), "gpu": peak["gpu"], "gemm_peak": peak,
           "model": "gpt2-124m", "micro_batch_size": a.micro_batch_size, "tp": 1}
    res["lossytp_bf16"] = run_lossytp(a, "bf16", True)
    if not a.skip_fp32:
        res["lossytp_fp32"] = run_lossytp(a, "fp32", False)
    res["pytorch_bf16"] = run_torch(a)
    for key in ("lossytp_bf16", "lossytp_fp32", "pytorch_bf16"):
        r = res.get(key)
        if r and "tokens_per_second" in r:
            r["mfu"] = r["flops_per_token"] * r["tokens_per_second"] / peak_flops
    lb, pt = res["lossytp_bf16"], res["pytorch_bf16"]
    res["targets"] = {
        "mfu_at_least_50pct": lb.get("mfu", 0) >= 0.5 if "mfu" in lb else None,
        "tokens_per_s_at_least_pytorch": (lb["tokens_per_second"] >= pt["tokens_per_second"])
        if "tokens_per_second" in lb and "tokens_per_second" in pt else None,
    }
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)

    print(f"\nGPU: {res['gpu']}   date: {res['date']}   bf16 GEMM peak: {peak['peak_bf16_tflops']:.1f} TFLOP/s")
    print(f"{'run':<16}{'tokens/s':>12}{'ms/step':>10}{'MFU':>8}")
    for key, label in (("lossytp_bf16", "lossytp bf16"), ("lossytp_fp32", "lossytp fp32"),
                       ("pytorch_bf16", "pytorch bf16")):
        r = res.get(key)
        if r is None:
            continue
        if "error" in r:
            print(f"{label:<16}  failed: {r['error'].splitlines()[-1] if r['error'] else ''}")
            continue
        print(f"{label:<16}{r['tokens_per_second']:>12.0f}{1e3 * r['median_step_time_s']:>10.1f}"
              f"{100 * r['mfu']:>7.1f}%")
    if "tokens_per_second" in lb and "tokens_per_second" in pt:
        print(f"lossytp / pytorch tokens/s: {lb['tokens_per_second'] / pt['tokens_per_second']:.2f}")
    print(f"targets: {res['targets']}")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
