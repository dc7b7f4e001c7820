#!/usr/bin/env bash
# Semigroup attention step time (issue 15): gpt-tiny, one rank, 1 thread, a training step with
# --attention semigroup (target: at most 1.3x the softmax step) and semigroup-esr (at most 2x),
# when `lossytp train --help` lists it. The runs are interleaved (softmax, semigroup, esr,
# softmax, ...) so that a drift in machine load hits every attention alike. Each run's step time is
# the median of /train/step_time_s without its first SKIP iterations; a ratio is the median over
# rounds of (attention / softmax of the same round). Results: docs/performance.md.
#
#   bash bench/semigroup.sh [BUILD_DIR] [--quick]     (default build/; builds lossytp there)
#   --quick   a smoke run (1 round, 4 iterations): checks the script, not the numbers
# Environment: ROUNDS (5), ITERS (12 per run), SKIP (2), THREADS (1), SKIP_BUILD=1 (no build).
set -euo pipefail
source "$(dirname "$0")/lib.bash" semigroup "$@"
ROUNDS=${ROUNDS:-5} ITERS=${ITERS:-12} SKIP=${SKIP:-2} THREADS=${THREADS:-1}
if (( quick )); then ROUNDS=1 ITERS=4; fi
export OMP_NUM_THREADS=$THREADS
atts=(softmax semigroup)
help=$("$bin" train --help 2>&1)  # not piped into grep -q: that would SIGPIPE lossytp under pipefail
if [[ $help == *semigroup-esr* ]]; then esr=1; atts+=(semigroup-esr); else esr=0; fi
echo "load before: $(uptime)"
echo "model: gpt-tiny (4 layers, hidden 256, 4 heads, seq 256, micro-batch 8), 1 rank, $THREADS thread(s); $ROUNDS rounds x $ITERS iterations per attention, interleaved"
for ((r = 1; r <= ROUNDS; ++r)); do
  for a in "${atts[@]}"; do
    "$bin" train --model gpt-tiny --attention "$a" --train-iters "$ITERS" --log-interval "$ITERS" \
      --eval-iters 0 --eval-interval 0 --threads "$THREADS" --quiet --out "$out/$a.$r" > /dev/null
  done
done
"$PY" - "$out" "$ROUNDS" "$SKIP" "$esr" <<'PY'
import sys, h5py, numpy as np
out, rounds, skip, esr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def step(a, r):
    with h5py.File(f"{out}/{a}.{r}/metrics.h5", "r") as f:
        return float(np.median(f["train/step_time_s"][skip:]))
targets = {"semigroup": 1.3, "semigroup-esr": 2.0}
soft = [step("softmax", r) for r in range(1, rounds + 1)]
print(f"{'softmax':14s} {np.median(soft)*1e3:8.1f} ms/step   (rounds: {' '.join(f'{s*1e3:.0f}' for s in soft)})")
for a in ["semigroup", "semigroup-esr"]:
    if a == "semigroup-esr" and not esr:
        print(f"{a:14s} not available (lossytp train --help does not list it)")
        continue
    s = [step(a, r) for r in range(1, rounds + 1)]
    ratio = float(np.median([x / y for x, y in zip(s, soft)]))
    verdict = "met" if ratio <= targets[a] else "NOT met"
    print(f"{a:14s} {np.median(s)*1e3:8.1f} ms/step   {ratio:.3f}x softmax (target <= {targets[a]}x: {verdict})"
          f"   (round ratios: {' '.join(f'{x/y:.3f}' for x, y in zip(s, soft))})")
PY
echo "load after: $(uptime)"
