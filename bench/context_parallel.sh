#!/usr/bin/env bash
# Context parallelism throughput (issue 14): CP=2 on 2 MPI ranks against CP=1 on one rank, same
# model and batch, at sequence length SEQ, for each --cp-comm-type (p2p first: the issue's target
# is CP=2 p2p >= 1.5x CP=1), one thread per rank. Reports each run's median step time
# (/train/step_time_s without the first iteration), tokens/s and the ratio to CP=1.
# Results: docs/performance.md.
#
#   bash bench/context_parallel.sh [BUILD_DIR] [--quick]   (default build/; builds lossytp there)
#   --quick   a smoke run (1 layer, 64 tokens, 2 iterations): checks the script, not the numbers
# Environment: LAYERS (4), HIDDEN (256), HEADS (4), VOCAB (4096), SEQ (1024), MICRO (1), M (2
# micro-batches), ITERS (5), THREADS (1 per rank), TYPES ("p2p all_gather a2a"). Run it on an
# otherwise idle machine with at least 2 cores.
set -euo pipefail
source "$(dirname "$0")/lib.bash" context_parallel "$@"
LAYERS=${LAYERS:-4} HIDDEN=${HIDDEN:-256} HEADS=${HEADS:-4} VOCAB=${VOCAB:-4096} SEQ=${SEQ:-1024}
MICRO=${MICRO:-1} M=${M:-2} ITERS=${ITERS:-5} THREADS=${THREADS:-1} TYPES=${TYPES:-"p2p all_gather a2a"}
if (( quick )); then LAYERS=1 HIDDEN=64 SEQ=64 ITERS=2; fi
export OMP_NUM_THREADS=$THREADS
common=(--model llama-tiny --num-layers "$LAYERS" --hidden-size "$HIDDEN" --num-attention-heads "$HEADS"
        --num-query-groups "$HEADS" --ffn-hidden-size $((HIDDEN * 8 / 3 / 64 * 64)) --vocab-size "$VOCAB"
        --seq-length "$SEQ" --micro-batch-size "$MICRO" --global-batch-size $((MICRO * M))
        --train-iters "$ITERS" --log-interval "$ITERS" --eval-iters 0 --eval-interval 0 --threads "$THREADS" --quiet)
echo "load before: $(uptime)"
echo "model: llama blocks, $LAYERS layers, hidden $HIDDEN, $HEADS heads, vocab $VOCAB, seq $SEQ; $M micro-batches of $MICRO; $ITERS iterations, $THREADS thread(s) per rank"
mpirun --oversubscribe --bind-to none -np 1 "$bin" train "${common[@]}" --out "$out/cp1"
for t in $TYPES; do
  mpirun --oversubscribe --bind-to none -np 2 "$bin" train "${common[@]}" --cp 2 --cp-comm-type "$t" --out "$out/cp2-$t"
done
"$PY" - "$out" "$((MICRO * M * SEQ))" $TYPES <<'PY'
import sys, h5py, numpy as np
out, tokens, types = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def step(name):
    return float(np.median(h5py.File(f"{out}/{name}/metrics.h5", "r")["train/step_time_s"][1:]))
s1 = step("cp1")
print(f"CP=1 (1 rank):            {s1*1e3:8.1f} ms/iter  {tokens/s1:8.0f} tok/s")
for t in types:
    s = step(f"cp2-{t}")
    print(f"CP=2 {t:<10} (2 ranks): {s*1e3:8.1f} ms/iter  {tokens/s:8.0f} tok/s  -> {s1/s:.2f}x CP=1")
PY
echo "load after: $(uptime)"
