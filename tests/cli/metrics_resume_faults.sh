#!/usr/bin/env bash
# A damaged metrics.h5 on resume (fault suite): `lossytp train --load RUN --out RUN` whose
# RUN/metrics.h5 is truncated, garbage, or has a byte flipped in the middle (in one of HDF5's
# B-tree nodes) stops before training with exit status 2 and an error naming the file, and leaves
# metrics.h5 and the checkpoints byte for byte as they were; moving the file aside then resumes
# (a new metrics.h5 with the iterations after the checkpoint). Under mpirun and virtual ranks.
# A grid re-run fails that run with the same message (the other ranks of the run stop at once, not
# after --comm-timeout), finishes the others, and resumes it once the file is moved aside.
# usage: metrics_resume_faults.sh path/to/lossytp workdir
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.bash" "$@"
need_h5py
mpi=("$MPIRUN" --oversubscribe --bind-to none -np 2)

small=(--num-layers 1 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --vocab-size 64
       --micro-batch-size 2 --tp 2 --save-interval 5 --log-interval 1 --threads 1 --quiet
       --comm-timeout 120)
# damage MODE FILE
damage() {
  case $1 in
    truncated) truncate -s $(( $(stat -c %s "$2") / 2 )) "$2" ;;
    garbage) head -c 5000 /dev/urandom > "$2" ;;
    flipped) $PY - "$2" <<'PY' ;;
import re, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
trees = [m.start() for m in re.finditer(b"TREE", b)]  # HDF5 v1 B-tree nodes (chunk indexes)
o = min(trees, key=lambda x: abs(x - len(b) // 2))
b[o + 1] ^= 0x10
open(p, "wb").write(b)
PY
  esac
}
sums() { sha256sum "$1"/metrics.h5 "$1"/checkpoint/* | sha256sum; }

"$L" train "${small[@]}" --virtual-ranks 2 --train-iters 20 --out base || bad "base run"
for how in virtual mpi; do
  for mode in truncated garbage flipped; do
    d=${how}_$mode
    cp -r base $d
    damage $mode $d/metrics.h5
    before=$(sums $d)
    if [[ $how == mpi ]]; then cmd=("${mpi[@]}" "$L" train "${small[@]}")
    else cmd=("$L" train "${small[@]}" --virtual-ranks 2); fi
    start=$SECONDS
    out=$(timeout 100 "${cmd[@]}" --train-iters 30 --out $d --load $d 2>&1); rc=$?
    [[ $rc -eq 2 && $((SECONDS - start)) -lt 60 ]] && ok "$d: exit status 2" || { bad "$d: exit status $rc"; echo "$out"; }
    grep -q "lossytp: error: cannot resume: metrics file $d/metrics.h5: .*mv $d/metrics.h5 $d/metrics.h5.damaged" <<<"$out" \
      && ok "$d: the error names the file" || { bad "$d: message"; echo "$out"; }
    grep -q "iter " <<<"$out" && bad "$d: it trained"
    [[ "$(sums $d)" == "$before" ]] && ok "$d: metrics.h5 and checkpoints untouched" || bad "$d: files modified"
  done
done
# The advice works: moved aside, the run resumes from its checkpoint with a new metrics.h5.
mv mpi_flipped/metrics.h5 mpi_flipped/metrics.h5.damaged
"${mpi[@]}" "$L" train "${small[@]}" --train-iters 30 --out mpi_flipped --load mpi_flipped > resume.log 2>&1 \
  || { bad "resume after moving the file aside"; cat resume.log; }
$PY - <<'PY' && ok "moved aside: resumed, iterations 21..30 in a new metrics.h5" || bad "the resumed run's metrics.h5"
import h5py
f = h5py.File("mpi_flipped/metrics.h5", "r")
assert f.attrs["status"] == "completed", f.attrs["status"]
assert list(f["train/iteration"][:]) == list(range(21, 31)), list(f["train/iteration"][:])
PY

# A grid re-run: the damaged run fails with the message, the others go on.
cat > g.toml <<'TOML'
[base]
num-layers = 1
hidden-size = 32
num-attention-heads = 4
seq-length = 16
vocab-size = 64
micro-batch-size = 2
train-iters = 20
save-interval = 5
threads = 1
tensor-model-parallel-size = 2
comm-timeout = 120
[sweep]
seed = [1, 2]
TOML
for how in mpi virtual; do
  if [[ $how == mpi ]]; then grid=("${mpi[@]}" "$L" grid g.toml --out g_$how)
  else grid=("$L" grid g.toml --out g_$how --virtual-ranks 2); fi
  timeout 100 "${grid[@]}" > g1_$how.log 2>&1 || { bad "$how grid: first run"; cat g1_$how.log; }
  # seed=1: back to its checkpoint of iteration 15, metrics.h5 damaged (so not `completed`: it is
  # resumed); seed=2: trained again from scratch
  rm g_$how/seed=1/checkpoint/rank*-it20.bin; echo 15 > g_$how/seed=1/checkpoint/latest
  rm -rf g_$how/seed=2
  damage flipped g_$how/seed=1/metrics.h5
  before=$(sums g_$how/seed=1)
  start=$SECONDS
  timeout 100 "${grid[@]}" > g2_$how.log 2>&1; rc=$?
  [[ $rc -eq 1 && $((SECONDS - start)) -lt 60 ]] && ok "$how grid: exit status 1, in time" || { bad "$how grid: rc $rc"; cat g2_$how.log; }
  grep -q "seed=1: failed: .*cannot resume: metrics file g_$how/seed=1/metrics.h5" g2_$how.log \
    && ok "$how grid: the run fails naming the file" || { bad "$how grid: message"; cat g2_$how.log; }
  [[ "$(sums g_$how/seed=1)" == "$before" ]] && ok "$how grid: its files untouched" || bad "$how grid: files modified"
  $PY - g_$how <<'PY' && ok "$how grid: grid.json failed + completed" || { bad "$how grid.json"; cat g_$how/grid.json; }
import json, sys
st = {r["id"]: r["status"] for r in json.load(open(sys.argv[1] + "/grid.json"))["runs"]}
assert st == {"seed=1": "failed", "seed=2": "completed"}, st
PY
  mv g_$how/seed=1/metrics.h5 g_$how/seed=1/metrics.h5.damaged
  timeout 100 "${grid[@]}" > g3_$how.log 2>&1 && grep -q "seed=1: completed.*resumed from iteration 15" g3_$how.log \
    && ok "$how grid: moved aside, the re-run resumes it" || { bad "$how grid: re-run after moving aside"; cat g3_$how.log; }
done

echo "metrics resume faults: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
