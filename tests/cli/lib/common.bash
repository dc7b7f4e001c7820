# Sourced by the CLI tests (tests/cli/*.sh; this folder is not globbed by ctest):
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" "$@"
# Sets L (the lossytp binary) and W (the work folder, recreated and entered) from the test's
# arguments, MPIRUN, pass/fail counters with ok/bad, and helpers.
L=$1; W=$2
MPIRUN=${MPIRUN:-mpirun}
mpi() { "$MPIRUN" --oversubscribe --bind-to none "$@"; }  # mpi -np N "$L" ...
rm -rf "$W"; mkdir -p "$W"; cd "$W"
fails=0; passes=0
ok() { echo "ok: $*"; passes=$((passes+1)); }
bad() { echo "FAIL: $*"; fails=$((fails+1)); }
# wait_line FILE REGEX: until a line of FILE matches (60 s at most)
wait_line() { for _ in $(seq 600); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# need_h5py: PY=/usr/bin/python3 with h5py, or the test is reported skipped (ctest: exit 77)
need_h5py() {
  PY=/usr/bin/python3
  "$PY" -c "import h5py" 2>/dev/null || { echo "SKIPPED: /usr/bin/python3 has no h5py (apt-get install python3-h5py)"; exit 77; }
}
# same_metrics RUN_A RUN_B [TRAIN_ROWS EVAL_ROWS]: /train/loss, /train/grad_norm and /eval/loss of two
# runs agree within 1e-5 (relative; each run with the given row counts, default 20 and 2); prints
# the largest relative difference. Needs need_h5py first.
same_metrics() {
  "$PY" - "$1" "$2" "${3:-20}" "${4:-2}" <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p + "/metrics.h5", "r") for p in sys.argv[1:3])
rows = {"train": int(sys.argv[3]), "eval": int(sys.argv[4])}
worst = 0.0
for k in ("train/loss", "train/grad_norm", "eval/loss"):
    x, y = a[k][:], b[k][:]
    assert len(x) == len(y) == rows[k.split("/")[0]], (k, len(x), len(y))
    assert np.all(np.isfinite(y)), k
    worst = max(worst, float(np.max(np.abs(x - y) / np.abs(x))))
print(f"{worst:.2e}")
sys.exit(0 if worst <= 1e-5 else 1)
PY
}
