#!/usr/bin/env bash
# The shipped grids: every experiments/*.toml and experiments/grids/**/*.toml passes
# `lossytp grid FILE --out DIR --dry-run` (every run checked, listed with a time estimate, nothing
# written), and the first run of each study grid (experiments/grids/studies/) starts and logs its
# iterations (its configuration cut to 2 iterations; not the whole study). Also: a dry run of a
# grid with a bad run fails with the run named, before anything is written.
# Grids name data files relative to the repository, so the grids run from its root.
# usage: study_grids.sh path/to/lossytp workdir
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$REPO/tests/cli/lib/common.bash" "$@"
need_h5py
cd "$REPO"

grids=$(ls experiments/*.toml; find experiments/grids -name '*.toml' | sort)
[[ -n "$grids" ]] || bad "no shipped grids found"
for g in $grids; do
  out="$W/dry_$(basename "$g" .toml)"
  if "$L" grid "$g" --out "$out" --dry-run --virtual-ranks 8 > "$W/dry.log" 2>&1 &&
     grep -q "^estimate: " "$W/dry.log" && [[ ! -e "$out" ]]; then
    ok "$g passes --dry-run ($(grep -c '^[0-9]' "$W/dry.log") runs; $(grep '^estimate:' "$W/dry.log" | cut -d' ' -f2) estimated)"
  else
    bad "$g --dry-run"; cat "$W/dry.log"
  fi
done

# the listing itself: ids, layout, ranks, estimate; how to launch when the job is too small
"$L" grid experiments/grids/studies/caat.toml --out "$W/caat_dry" --dry-run > "$W/caat.log" 2>&1
if grep -q "^1 *data=builtin_net=exact_tp=4_seed=1 *4.1.1.1 *4 llama-tiny *100 pending" "$W/caat.log" &&
   grep -q "^48 " "$W/caat.log" && grep -q "launch with at least 8 ranks" "$W/caat.log"; then
  ok "caat dry run lists 48 runs with layout and ranks, and how to launch"
else
  bad "caat dry run listing"; cat "$W/caat.log"
fi

# a bad run: named, nothing written, exit 2
printf '[base]\nmodel = "gpt-tiny"\n[sweep]\nnet = ["exact", "drop:rate=2"]\n' > "$W/bad.toml"
if "$L" grid "$W/bad.toml" --out "$W/bad_out" --dry-run > "$W/bad.log" 2>&1; then
  bad "a grid with drop:rate=2 passed --dry-run"
elif [[ $? -eq 2 ]] && grep -q "rate" "$W/bad.log" && [[ ! -e "$W/bad_out" ]]; then
  ok "a bad run fails the dry run with exit 2, nothing written: $(tail -1 "$W/bad.log")"
else
  bad "bad grid dry run"; cat "$W/bad.log"
fi

# The first run of each study grid, cut to 2 iterations: starts and logs both.
for g in experiments/grids/studies/*.toml; do
  name=$(basename "$g" .toml)
  ranks=$("$PY" - "$g" "$W/first_$name.toml" <<'PY'
import sys, tomllib
src, dst = sys.argv[1:3]
with open(src, "rb") as f:
    t = tomllib.load(f)
cfg = dict(t.get("base", {}))
for k, v in t.get("sweep", {}).items():  # the first run: the first value of every sweep
    cfg["seed" if k == "seeds" else k] = v[0]
if "runs" in t and not t.get("sweep"):
    cfg.update(t["runs"][0])
cfg.update({"train-iters": 2, "eval-interval": 2, "eval-iters": 1, "save-interval": 0, "log-interval": 1})
def val(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v + '"'
    return repr(v)
with open(dst, "w") as f:
    seed = cfg.pop("seed", 1)
    f.write("[base]\n" + "".join(f"{k} = {val(v)}\n" for k, v in cfg.items()))
    f.write(f"[sweep]\nseeds = [{seed}]\n")
ranks = 1
for k in ("tensor-model-parallel-size", "data-parallel-size", "pipeline-model-parallel-size", "context-parallel-size"):
    ranks *= int(cfg.get(k, 1))
print(ranks)
PY
)
  out="$W/first_$name"
  if "$L" grid "$W/first_$name.toml" --out "$out" --virtual-ranks "$ranks" > "$W/first_$name.log" 2>&1 &&
     "$PY" - "$out" <<'PY'
import sys, glob, h5py, numpy as np
(run,) = glob.glob(sys.argv[1] + "/*/metrics.h5")
with h5py.File(run, "r") as f:
    loss = f["train/loss"][:]
    assert len(loss) == 2 and np.all(np.isfinite(loss)), loss
    assert f.attrs["status"] == "completed", f.attrs["status"]
PY
  then
    ok "$name: its first run ($ranks virtual ranks) starts and logs 2 iterations"
  else
    bad "$name: first run"; tail -20 "$W/first_$name.log"
  fi
done

echo "study_grids: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
