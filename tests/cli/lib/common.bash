# Sourced by the CLI tests (tests/cli/*.sh; this folder is not globbed by ctest):
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" "$@"
# Sets L (the lossytp binary) and W (the work folder, recreated and entered) from the test's
# arguments, MPIRUN, pass/fail counters with ok/bad, and helpers.
L=$1; W=$2
MPIRUN=${MPIRUN:-mpirun}
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
