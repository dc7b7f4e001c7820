#!/usr/bin/env bash
# A real training run killed (-9) at random moments: each time, h5dump and h5py open its
# metrics.h5, and it holds a prefix of an uninterrupted run's rows (bit for bit, every train and
# comm series), ending at a flush (a multiple of the log or eval interval, or the last iteration).
# Readers also open it while the run writes. (The writer alone, killed hundreds of times with
# exact flush bookkeeping: ctest -R metrics_crash.)
# usage: metrics_crash.sh path/to/lossytp workdir
set -eu
L=$1; W=$2
rm -rf "$W"; mkdir -p "$W"; cd "$W"
fail() { echo "FAIL: $*"; exit 1; }
PY=/usr/bin/python3
$PY -c 'import h5py' 2>/dev/null || { echo "SKIPPED: /usr/bin/python3 has no h5py (apt-get install python3-h5py)"; exit 77; }

args=(train --num-layers 2 --hidden-size 64 --num-attention-heads 2 --seq-length 32
      --vocab-size 256 --micro-batch-size 2 --tp 2 --virtual-ranks 2 --threads 1
      --log-interval 3 --eval-interval 50 --eval-iters 1 --train-iters 1500 --quiet)
export OMP_NUM_THREADS=1
"$L" "${args[@]}" --out ref > ref.log 2>&1 || { cat ref.log; fail "reference run failed"; }

cat > check.py <<'PY'
import sys, h5py, numpy as np
path, ref_path, log_interval, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
f, ref = h5py.File(path, "r"), h5py.File(ref_path, "r")
assert f.attrs["status"] in ("running", "completed"), f.attrs["status"]
if "train" not in f:  # the flush at the start: attributes only
    print(0)
    sys.exit(0)
n = f["train/iteration"].shape[0]
# flushes: every log interval, at every evaluation (--eval-interval 50) and at the end
assert n % log_interval == 0 or n % 50 == 0 or n == iters, f"{n} rows: not at a flush"
def series(g, prefix=""):
    out = []
    g.visititems(lambda k, v: out.append(prefix + k) if isinstance(v, h5py.Dataset) else None)
    return out
assert f["comm/iteration"].shape[0] == n
for name in series(f["train"], "train/") + series(f["comm"], "comm/"):
    if "time" in name or name.endswith("sim_step_s"):  # measured wall-clock time in it
        continue
    a = f[name][:]
    assert len(a) == n, (name, len(a), n)
    assert np.array_equal(a, ref[name][:n]), name
print(n)
PY

seed=7
for round in 1 2 3 4 5 6; do
  "$L" "${args[@]}" --out run --overwrite > run.log 2>&1 &
  pid=$!
  seed=$(( (seed * 1103515245 + 12345) % 2147483648 ))
  sleep "$(( seed / 7 % 2 )).$(( 3 + seed % 7 ))"
  if kill -0 "$pid" 2>/dev/null && [[ -f run/metrics.h5 ]]; then  # readers during the run
    h5dump -H run/metrics.h5 > /dev/null || fail "round $round: h5dump could not open the file mid-run"
    $PY check.py run/metrics.h5 ref/metrics.h5 3 1500 > /dev/null || fail "round $round: mid-run read"
  fi
  sleep "0.$(( seed % 9 ))"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [[ -f run/metrics.h5 ]] || { echo "round $round: killed before the first flush"; continue; }
  h5dump -H run/metrics.h5 > /dev/null || fail "round $round: h5dump cannot open the file after kill -9"
  h5dump run/metrics.h5 > /dev/null || fail "round $round: h5dump cannot read the data"
  n=$($PY check.py run/metrics.h5 ref/metrics.h5 3 1500) || fail "round $round: file after kill -9"
  echo "round $round: killed, metrics.h5 holds $n rows, all equal to the uninterrupted run's"
done
echo "PASS"
