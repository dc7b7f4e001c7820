#!/usr/bin/env bash
# Pipeline parallelism throughput and bubble (issue 13): PP=2 on 2 MPI ranks against PP=1 on one
# rank, same model, same global batch of M micro-batches, one thread per rank. Reports each run's
# median step time (/train/step_time_s without the first iteration) and tokens/s, their ratio, and
# PP=2's simulated bubble fraction (/train/pipeline_bubble: the simulated timeline from each op's
# measured compute) against the 1F1B formula (P-1)/(M+P-1). Results: docs/performance.md.
#
#   bash bench/pipeline.sh [BUILD_DIR] [--quick]     (default build/; builds lossytp there)
#   --quick   a smoke run (2 layers, 32 tokens, 2 iterations): checks the script, not the numbers
# Environment: LAYERS (8), HIDDEN (384), HEADS (6), VOCAB (4096), SEQ (256), MICRO (1), M (8
# micro-batches), ITERS (5), THREADS (1 per rank). Run it on an otherwise idle machine with at
# least 2 cores.
set -euo pipefail
source "$(dirname "$0")/lib.bash" pipeline "$@"
LAYERS=${LAYERS:-8} HIDDEN=${HIDDEN:-384} HEADS=${HEADS:-6} VOCAB=${VOCAB:-4096} SEQ=${SEQ:-256}
MICRO=${MICRO:-1} M=${M:-8} ITERS=${ITERS:-5} THREADS=${THREADS:-1}
if (( quick )); then LAYERS=2 HIDDEN=64 HEADS=4 SEQ=32 ITERS=2; fi
export OMP_NUM_THREADS=$THREADS
common=(--model gpt2-124m --num-layers "$LAYERS" --hidden-size "$HIDDEN" --num-attention-heads "$HEADS"
        --vocab-size "$VOCAB" --seq-length "$SEQ" --micro-batch-size "$MICRO"
        --global-batch-size $((MICRO * M)) --train-iters "$ITERS" --log-interval "$ITERS" --eval-iters 0
        --eval-interval 0 --threads "$THREADS" --quiet)
echo "load before: $(uptime)"
echo "model: gpt2-124m blocks, $LAYERS layers, hidden $HIDDEN, vocab $VOCAB, seq $SEQ; $M micro-batches of $MICRO; $ITERS iterations, $THREADS thread(s) per rank"
mpirun --oversubscribe --bind-to none -np 1 "$bin" train "${common[@]}" --out "$out/pp1"
mpirun --oversubscribe --bind-to none -np 2 "$bin" train "${common[@]}" --pp 2 --out "$out/pp2"
"$PY" - "$out" "$M" "$((MICRO * M * SEQ))" <<'PY'
import sys, h5py, numpy as np
out, M, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def run(name):
    f = h5py.File(f"{out}/{name}/metrics.h5", "r")
    step = float(np.median(f["train/step_time_s"][1:]))
    return step, float(np.median(f["train/pipeline_bubble"][1:])), float(np.median(f["train/sim_step_s"][1:]))
s1, _, _ = run("pp1")
s2, bubble, sim2 = run("pp2")
P = 2
print(f"PP=1 (1 rank):  {s1*1e3:8.1f} ms/iter  {tokens/s1:8.0f} tok/s")
print(f"PP=2 (2 ranks): {s2*1e3:8.1f} ms/iter  {tokens/s2:8.0f} tok/s  -> {s1/s2:.2f}x PP=1")
print(f"PP=2 simulated step {sim2*1e3:.1f} ms; bubble {bubble:.3f} (1F1B formula (P-1)/(M+P-1) = {(P-1)/(M+P-1):.3f})")
PY
echo "load after: $(uptime)"
