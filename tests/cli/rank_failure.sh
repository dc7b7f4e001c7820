#!/usr/bin/env bash
# A rank other than 0 that fails first (fault suite): rank 0 learns of it within a fraction of
# a second (not after --comm-timeout), marks metrics.h5 `failed` with that rank's message, and
# the command exits 1; under mpirun and with virtual ranks. A grid records the run as failed and
# goes on.
# usage: rank_failure.sh path/to/lossytp workdir
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" "$@"
need_h5py

small=(--num-layers 1 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --vocab-size 64
       --micro-batch-size 2 --train-iters 50 --threads 1 --quiet --tp 2
       --debug-fail-at 5 --debug-fail-rank 1 --comm-timeout 300)

check_failed() {  # DIR
  $PY - "$1" <<'PY' && ok "$1: failed, with rank 1's message" || bad "$1: metrics.h5"
import h5py, sys
f = h5py.File(sys.argv[1] + "/metrics.h5", "r")
assert f.attrs["status"] == "failed", f.attrs["status"]
assert "rank 1 failed: injected failure at iteration 5" in f.attrs["error"], f.attrs["error"]
PY
}

for how in mpi virtual; do
  if [[ $how == mpi ]]; then cmd=("$MPIRUN" --oversubscribe --bind-to none -np 2 "$L" train "${small[@]}")
  else cmd=("$L" train "${small[@]}" --virtual-ranks 2); fi
  start=$SECONDS
  out=$(timeout 120 "${cmd[@]}" --out $how 2>&1); rc=$?
  took=$((SECONDS - start))
  [[ $rc -eq 1 ]] && ok "$how: exit status 1" || { bad "$how: exit status $rc"; echo "$out"; }
  [[ $took -lt 60 ]] && ok "$how: stopped in ${took}s (--comm-timeout 300)" || bad "$how: took ${took}s"
  grep -q "rank 1 failed: injected failure" <<<"$out" || { bad "$how: rank 0's message lacks the cause"; echo "$out"; }
  check_failed $how
done

cat > g.toml <<'TOML'
[base]
num-layers = 1
hidden-size = 32
num-attention-heads = 4
seq-length = 16
vocab-size = 64
micro-batch-size = 2
train-iters = 20
threads = 1
tensor-model-parallel-size = 2
comm-timeout = 300
[[runs]]
debug-fail-at = 5
debug-fail-rank = 1
[[runs]]
seed = 2
TOML
start=$SECONDS
timeout 120 "$MPIRUN" --oversubscribe --bind-to none -np 2 "$L" grid g.toml --out g > g.log 2>&1; rc=$?
[[ $rc -eq 1 && $((SECONDS - start)) -lt 60 ]] && ok "grid: exit status 1, in time" || { bad "grid: rc $rc"; cat g.log; }
$PY - <<'PY' && ok "grid.json: the failed run and the next one" || { bad "grid.json"; cat g/grid.json; }
import json
st = [r["status"] for r in json.load(open("g/grid.json"))["runs"]]
assert sorted(st) == ["completed", "failed"], st
err = [r.get("error", "") for r in json.load(open("g/grid.json"))["runs"] if r["status"] == "failed"][0]
assert "rank 1 failed: injected failure" in err, err
PY

echo "rank failure: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
