#!/usr/bin/env bash
# Peak memory per rank with and without issue 12's memory features, on a gpt2-124m-shaped model
# with fewer layers, under mpirun (one process per rank, so each rank's peak RSS is its own):
#   - --use-distributed-optimizer at DP=2 against DP=2 without (optimizer state / 2),
#   - --sequence-parallel at TP=2 against TP=2 without (activations),
#   - --recompute-granularity full (uniform, every block) on one rank against no recompute
#     (activations, step time).
# For each run: the largest peak RSS of its ranks (metrics.h5 attribute peak_rss_bytes), the
# dry run's estimate of optimizer state and activations per rank, and the median step time
# (/train/step_time_s without the first iteration); then each feature's ratios against its
# baseline. A flag that `lossytp train --help` does not list is reported "not available".
# Results: docs/performance.md.
#
#   bash bench/memory.sh [BUILD_DIR] [--quick]     (default build/; builds lossytp there)
#   --quick   a smoke run (1 layer, 64 tokens, 2 iterations): checks the script, not the numbers
# Environment: LAYERS (8: below ~8 layers the logits, which recompute keeps, dominate activations), SEQ (512), MICRO (2), ITERS (4), THREADS (1 per rank).
# Run it on an otherwise idle machine with at least 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build
quick=0
for a in "$@"; do
  if [[ $a == --quick ]]; then quick=1; else build=$a; fi
done
LAYERS=${LAYERS:-8} SEQ=${SEQ:-512} MICRO=${MICRO:-2} ITERS=${ITERS:-4} THREADS=${THREADS:-1}
if (( quick )); then LAYERS=1 SEQ=64 MICRO=1 ITERS=2; fi
PY=/usr/bin/python3
"$PY" -c 'import h5py' 2>/dev/null || { echo "bench/memory.sh: $PY cannot import h5py" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "bench/memory.sh: mpirun not found" >&2; exit 1; }
if [[ ${SKIP_BUILD:-0} != 1 ]]; then cmake --build "$build" -j2 --target lossytp > /dev/null; fi
bin=$build/lossytp
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=$THREADS
help=$("$bin" train --help)
has() { grep -q -- "$1" <<< "$help"; }

common=(--model gpt2-124m --num-layers "$LAYERS" --seq-length "$SEQ" --micro-batch-size "$MICRO"
        --train-iters "$ITERS" --log-interval "$ITERS" --eval-iters 0 --eval-interval 0
        --threads "$THREADS" --quiet)
# name | ranks | flags (the feature's flag last: its availability is checked)
runs=(
  "dp2|2|--dp 2"
  "dp2+distopt|2|--dp 2 --use-distributed-optimizer"
  "tp2|2|--tp 2"
  "tp2+sp|2|--tp 2 --sequence-parallel"
  "tp1|1|"
  "tp1+recompute|1|--recompute-method uniform --recompute-num-layers 1 --recompute-granularity full"
)
echo "load before: $(uptime)"
echo "model: gpt2-124m, $LAYERS layers, seq $SEQ, micro-batch $MICRO, $ITERS iterations, $THREADS thread(s) per rank"
for spec in "${runs[@]}"; do
  IFS='|' read -r name np flags <<< "$spec"
  read -ra f <<< "$flags"
  feature=
  (( ${#f[@]} )) && feature=${f[-1]}
  if [[ $feature == --* ]] && ! has "$feature"; then
    echo "$name: not available ($feature is not an option of this lossytp)"
    echo na > "$out/$name.na"
    continue
  fi
  if ! "$bin" train "${common[@]}" "${f[@]}" --virtual-ranks "$np" --dry-run --json > "$out/$name.plan.json" \
       2> "$out/$name.log"; then
    echo "$name: the dry run failed: $(tail -1 "$out/$name.log")"
    echo failed > "$out/$name.na"
    continue
  fi
  if ! mpirun --oversubscribe -np "$np" "$bin" train "${common[@]}" "${f[@]}" --out "$out/$name" \
       > "$out/$name.log" 2>&1; then
    echo "$name: failed:"; tail -5 "$out/$name.log"
    echo failed > "$out/$name.na"
    continue
  fi
  echo "$name: done"
done
"$PY" - "$out" <<'PY'
import json, os, sys
import h5py, numpy as np
out = sys.argv[1]
MB = 1e6
rows = {}
for name in ["dp2", "dp2+distopt", "tp2", "tp2+sp", "tp1", "tp1+recompute"]:
    if os.path.exists(os.path.join(out, name + ".na")):
        rows[name] = None
        continue
    plan = json.load(open(os.path.join(out, name + ".plan.json")))
    with h5py.File(os.path.join(out, name, "metrics.h5"), "r") as f:
        rss = float(f.attrs["peak_rss_bytes"])
        st = np.asarray(f["train/step_time_s"][()], dtype=float)
    st = st[1:] if len(st) > 1 else st
    m = plan["memory_per_rank"]
    rows[name] = dict(rss=rss, opt=m["optimizer"], act=m["activations"], ms=1e3 * float(np.median(st)))
print()
print("%-15s %14s %14s %16s %10s" % ("run", "peak RSS/rank", "est. optimizer", "est. activations", "ms/iter"))
for name, r in rows.items():
    if r is None:
        print("%-15s %14s" % (name, "not available"))
    else:
        print("%-15s %11.1f MB %11.1f MB %13.1f MB %10.1f" % (name, r["rss"] / MB, r["opt"] / MB, r["act"] / MB, r["ms"]))
print()
print("%-32s %10s %10s %10s %10s" % ("feature (vs baseline)", "RSS", "optimizer", "activations", "step time"))
for feat, base in [("dp2+distopt", "dp2"), ("tp2+sp", "tp2"), ("tp1+recompute", "tp1")]:
    a, b = rows.get(feat), rows.get(base)
    label = "%s / %s" % (feat, base)
    if a is None or b is None:
        print("%-32s %10s" % (label, "not available"))
        continue
    ratio = lambda k: "%.3f" % (a[k] / b[k]) if b[k] > 0 else "-"
    print("%-32s %10s %10s %10s %10s" % (label, ratio("rss"), ratio("opt"), ratio("act"), ratio("ms")))
PY
echo "load after: $(uptime)"
