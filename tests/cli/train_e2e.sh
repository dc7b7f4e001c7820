#!/usr/bin/env bash
# A user's run end to end: a TOML config with a flag overriding it, TP=2 under mpirun, byte-level
# text data, progress lines, and a metrics.h5 that h5dump and h5py read.
# usage: train_e2e.sh path/to/lossytp workdir
set -eu
L=$1; W=$2
MPIRUN=${MPIRUN:-mpirun}
rm -rf "$W"; mkdir -p "$W"; cd "$W"
fail() { echo "FAIL: $*"; exit 1; }

# some English-like text (generated, so the test needs no data files)
python3 -c "
import random
random.seed(1)
words = 'the of and to in is was he that it for with as his on be at by had are but from'.split()
print(' '.join(random.choice(words) for _ in range(40000)))" > corpus.txt

cat > run.toml <<'TOML'
num-layers = 2
hidden-size = 64
num-attention-heads = 4
seq-length = 32
micro-batch-size = 4
train-iters = 999          # overridden on the command line
log-interval = 5
eval-interval = 10
eval-iters = 2
lr = 0.003
tensor-model-parallel-size = 2
TOML

out=$("$MPIRUN" --oversubscribe --bind-to none -np 2 "$L" train --config run.toml --train-iters 20 \
      --data corpus.txt --out run --threads 1 2>&1) || { echo "$out"; fail "training exited non-zero"; }
echo "$out"
grep -q "tp 2 x dp 1" <<<"$out" || fail "layout line missing"
[[ $(grep -c "^iter " <<<"$out") -eq 4 ]] || fail "expected 4 progress lines (every 5 iterations)"
grep -q "iter     20/20 .*eval_loss" <<<"$out" || fail "final line with eval loss missing"
grep -q "tok/s" <<<"$out" && grep -q "ETA" <<<"$out" || fail "progress line lacks tok/s or ETA"

[[ -f run/metrics.h5 ]] || fail "no metrics.h5"
[[ ! -e run/metrics.h5.tmp ]] || fail "temporary file left behind"
h5dump -H run/metrics.h5 > /dev/null || fail "h5dump cannot read metrics.h5"
h5dump -d /train/loss run/metrics.h5 | grep -q "( 20 )" || fail "/train/loss should have 20 rows"

if /usr/bin/python3 -c "import h5py" 2>/dev/null; then
  /usr/bin/python3 - <<'PY' || fail "h5py check"
import h5py, json, math
f = h5py.File("run/metrics.h5", "r")
assert f.attrs["status"] == "completed", f.attrs["status"]
cfg = json.loads(f.attrs["config"])
assert cfg["train-iters"] == 20 and cfg["tensor-model-parallel-size"] == 2, cfg
assert cfg["vocab-size"] == 256, "byte-level text uses vocab 256"
assert cfg["num-layers"] == 2 and cfg["lr"] > 0.0029
for k in ["iteration", "loss", "lr", "grad_norm", "step_time_s"]:
    d = f["train/" + k]
    assert d.shape == (20,) and d.maxshape == (None,), (k, d.shape, d.maxshape)
assert list(f["eval/iteration"][:]) == [10, 20]
loss = f["train/loss"][:]
assert all(math.isfinite(x) for x in loss)
assert loss[-1] < loss[0] - 1.0, loss           # it learns the text
assert f["comm/layer1.attn.proj.fwd/bytes"][-1] > 0
print("h5py: ok", loss[0], "->", loss[-1])
PY
else
  echo "WARN: /usr/bin/python3 has no h5py; skipped the h5py checks"
fi
echo "train e2e: 1 passed, 0 failed"
