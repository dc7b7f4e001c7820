#!/usr/bin/env bash
# lossytp grid as a user runs it: side-by-side runs under mpirun, a SIGKILL in the middle and a
# re-run that finishes the grid without retraining finished runs; divergence and failure of
# single runs; bad grid inputs that leave an existing results folder untouched.
# usage: grid.sh path/to/lossytp workdir
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" "$@"
run() { "$MPIRUN" --oversubscribe --bind-to none "$@"; }

cat > grid.toml <<'TOML'
[base]
num-layers = 2
hidden-size = 64
num-attention-heads = 4
seq-length = 64
vocab-size = 128
micro-batch-size = 4
train-iters = 150
eval-interval = 50
log-interval = 10
save-interval = 10
comm-timeout = 20

[sweep]
net = ["exact", "drop:rate=0.02", "ge:preset=one"]
seeds = [1, 2]
TOML

# 1. start the grid (2 ranks: two tp=1 runs side by side) and kill it after the first round
run -np 2 "$L" grid grid.toml --out res > first.log 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  n=$(grep -c '"status": "completed"' res/grid.json 2>/dev/null || true)
  [[ ${n:-0} -ge 2 ]] && break
  sleep 0.1
done
sleep 0.4   # somewhere inside the second round
pkill -9 -f "lossytp grid grid.toml" ; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
echo "--- killed; first attempt printed:"; cat first.log
done_before=$(/usr/bin/python3 -c "
import json; j = json.load(open('res/grid.json'))
print(' '.join(r['id'] for r in j['runs'] if r['status'] == 'completed'))")
[[ -n $done_before ]] && ok "runs completed before the kill: $done_before" || bad "nothing completed before the kill"
declare -A sum
for id in $done_before; do sum[$id]=$(sha256sum "res/$id/metrics.h5" | cut -d' ' -f1); done

# every metrics.h5 is readable right after the kill
for f in res/*/metrics.h5; do h5dump -H "$f" > /dev/null 2>&1 || bad "$f unreadable after kill -9"; done

# 2. the same command again finishes the grid
run -np 2 "$L" grid grid.toml --out res > second.log 2>&1; rc=$?
cat second.log
[[ $rc -eq 0 ]] && ok "re-run exits 0" || bad "re-run exit status $rc"
for id in $done_before; do
  grep -q "] $id:" second.log && bad "$id was trained twice"
  [[ $(sha256sum "res/$id/metrics.h5" | cut -d' ' -f1) == "${sum[$id]}" ]] || bad "$id/metrics.h5 changed"
done
ok "finished runs were not retrained"
/usr/bin/python3 - <<'PY' && ok "all 6 runs completed, 150 rows each, no duplicates" || bad "final state"
import json, h5py
j = json.load(open("res/grid.json"))
assert len(j["runs"]) == 6 and all(r["status"] == "completed" for r in j["runs"]), j
for r in j["runs"]:
    f = h5py.File(f"res/{r['id']}/metrics.h5", "r")
    assert f.attrs["status"] == "completed"
    it = list(f["train/iteration"][:])
    assert it == list(range(1, 151)), (r["id"], it[:5], len(it))
PY

# 3. a diverging run and a failing run do not stop the grid
cat > faults.toml <<'TOML'
[base]
num-layers = 1
hidden-size = 32
num-attention-heads = 4
seq-length = 16
vocab-size = 64
micro-batch-size = 2
train-iters = 8
tp = 2
comm-timeout = 3

[[runs]]
debug-nan-at = 3
[[runs]]
debug-fail-at = 2
[[runs]]
seed = 5
TOML
run -np 2 "$L" grid faults.toml --out faults > faults.log 2>&1; rc=$?
cat faults.log
[[ $rc -eq 1 ]] && ok "a failed run gives exit status 1" || bad "faults exit status $rc"
/usr/bin/python3 - <<'PY' && ok "diverged, failed (with message) and completed recorded" || bad "fault statuses"
import json, h5py
runs = {r["id"]: r for r in json.load(open("faults/grid.json"))["runs"]}
assert runs["debug-nan-at=3"]["status"] == "diverged", runs
assert runs["debug-fail-at=2"]["status"] == "failed" and "injected" in runs["debug-fail-at=2"]["error"], runs
assert runs["seed=5"]["status"] == "completed", runs
f = h5py.File("faults/debug-fail-at=2/metrics.h5", "r")
assert f.attrs["status"] == "failed" and "injected" in f.attrs["error"]
PY

# 4. the same grid in one process on virtual ranks (no mpirun) gives the same numbers
cat > small.toml <<'TOML'
[base]
num-layers = 1
hidden-size = 32
num-attention-heads = 4
seq-length = 16
vocab-size = 64
micro-batch-size = 2
train-iters = 10
tp = 2

[sweep]
net = ["exact", "ge:preset=one", "caat:p=0.5"]
TOML
run -np 2 "$L" grid small.toml --out small_mpi > small_mpi.log 2>&1 || bad "small grid under mpirun"
"$L" grid small.toml --out small_virtual --virtual-ranks 4 > small_virtual.log 2>&1 || bad "small grid on virtual ranks"
/usr/bin/python3 - <<'PY' && ok "virtual ranks reproduce the MPI grid" || bad "virtual ranks differ from MPI"
import json
a = {r["id"]: r for r in json.load(open("small_mpi/grid.json"))["runs"]}
b = {r["id"]: r for r in json.load(open("small_virtual/grid.json"))["runs"]}
assert a.keys() == b.keys() and len(a) == 3
for k in a:
    assert a[k]["status"] == b[k]["status"] == "completed", (a[k], b[k])
    assert abs(a[k]["final_eval_loss"] - b[k]["final_eval_loss"]) <= 1e-6 * abs(a[k]["final_eval_loss"]), (k, a[k], b[k])
PY

# 5. bad input: one message, exit 2, the existing results untouched
before=$(find res -type f -exec sha256sum {} + | sort | sha256sum)
expect2() {  # expect2 "text" args...
  local want=$1; shift
  out=$(run -np 2 "$L" "$@" 2>&1); rc=$?
  if [[ $rc -eq 2 ]] && grep -qF -- "$want" <<<"$out" && [[ $(grep -c "lossytp: error:" <<<"$out") -eq 1 ]]; then
    ok "rejected: $want"
  else
    bad "expected exit 2 and '$want', got $rc: $out"
  fi
}
printf '[base]\nlr = 0.1\n[sweep]\nlr = []\n' > empty.toml
expect2 "empty sweep" grid empty.toml --out res
printf '[base]\nbogus = 1\n[sweep]\nseeds = [1]\n' > unknown.toml
expect2 "unknown key 'bogus'" grid unknown.toml --out res
printf '[base]\ntp = 4\nnum-attention-heads = 4\n[sweep]\nseeds = [1]\n' > big.toml
expect2 "needs tp x dp = 4 ranks but the job has 2" grid big.toml --out new
sed 's/train-iters = 150/train-iters = 160/' grid.toml > changed.toml
expect2 "holds results of a different grid file" grid changed.toml --out res
mkdir -p other && echo data > other/file.txt
expect2 "is not empty and holds no grid.json" grid grid.toml --out other
after=$(find res -type f -exec sha256sum {} + | sort | sha256sum)
[[ $before == "$after" ]] && ok "results folder untouched by rejected commands" || bad "results folder changed"
[[ $(cat other/file.txt) == data ]] || bad "other/file.txt changed"

echo "grid: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
