#!/usr/bin/env bash
# metrics.h5 at scale (issue 10): the same short run for 5,000 and 20,000 iterations (the wall
# time ratio; 4.0 is linear, the target is at most 4.4) and the time of one flush as the file
# grows (bench_metrics_flush: flat when a flush is O(new rows)). Results: docs/performance.md.
#   bash bench/metrics_flush.sh [BUILD_DIR]     (default build/; builds lossytp and
#                                                bench_metrics_flush there)
#   BASELINE=/path/to/older/lossytp bash bench/metrics_flush.sh   also times that binary
# Run it on an otherwise idle machine: it prints the load average before and after.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
cmake --build "$build" -j2 --target lossytp bench_metrics_flush > /dev/null
bin=$build/lossytp
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "load before: $(uptime)"
# A model small enough that the run's own work is seconds: what is left is the per-interval cost.
args=(train --num-layers 2 --hidden-size 64 --num-attention-heads 2 --seq-length 32
      --vocab-size 256 --micro-batch-size 2 --tp 2 --virtual-ranks 2 --threads 1
      --log-interval 10 --eval-interval 0 --quiet)
timed_runs() {  # $1: the binary, $2: a label
  local n t0 t1; declare -A wall
  for n in 5000 20000; do
    t0=$(date +%s.%N)
    OMP_NUM_THREADS=1 "$1" "${args[@]}" --train-iters "$n" --out "$out/$2$n" > "$out/log" 2>&1 ||
      { cat "$out/log"; exit 1; }
    t1=$(date +%s.%N)
    wall[$n]=$(echo "$t1 - $t0" | bc -l)
    printf "%-9s %6d iterations: %7.2f s, metrics.h5 %5.1f MB\n" "$2" "$n" "${wall[$n]}" \
      "$(echo "$(stat -c %s "$out/$2$n/metrics.h5") / 1000000" | bc -l)"
  done
  printf "%-9s ratio 20000/5000: %.2f (linear: 4.00)\n" "$2" \
    "$(echo "${wall[20000]} / ${wall[5000]}" | bc -l)"
}
timed_runs "$bin" lossytp
[[ -n ${BASELINE:-} ]] && timed_runs "$BASELINE" baseline
echo
"$build/bench/bench_metrics_flush" --rows 50000 --interval 10 --sites 13 --dir "$out"
echo "load after: $(uptime)"
