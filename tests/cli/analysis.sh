#!/usr/bin/env bash
# `lossytp summarize` and `lossytp plot` on a small grid of real runs (exact and drop:rate=0.05,
# two seeds each, TP=2 under mpirun): the CSVs' rows and columns, exact rows with gap 0 and lossy
# rows with the difference to their twin, the replica divergence (0 for exact runs, positive for
# the lossy ring runs), the PNGs, and bad input (exit 2, one message, the folder untouched).
# usage: analysis.sh path/to/lossytp workdir
set -u
L=$1; W=$2
MPIRUN=${MPIRUN:-mpirun}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3
rm -rf "$W"; mkdir -p "$W"; cd "$W"
passes=0; fails=0
pass() { echo "ok: $*"; passes=$((passes+1)); }
fail() { echo "FAIL: $*"; fails=$((fails+1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

small=(--num-layers 1 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --vocab-size 64
       --micro-batch-size 2 --train-iters 6 --eval-interval 3 --quiet)
train() {  # train ID NET SEED
  local out
  if out=$("$MPIRUN" --oversubscribe --bind-to none -np 2 "$L" train --tp 2 "${small[@]}" \
             --net "$2" --seed "$3" --out "$W/grid/$1" 2>&1); then
    pass "train $1 ($2, seed $3)"
  else
    fail "train $1 ($2, seed $3)"; echo "$out" | sed 's/^/    /'
  fi
}
train exact-s1 exact 1
train exact-s2 exact 2
train drop-s1 drop:rate=0.05 1
train drop-s2 drop:rate=0.05 2
if (( fails )); then  # everything below needs the runs
  echo "analysis: $passes passed, $fails failed (no runs to analyse: stopping)"; exit 1
fi

# ---- summarize -------------------------------------------------------------------------------
out=$("$L" summarize "$W/grid" 2>&1); rc=$?
echo "$out" | sed 's/^/    /'
check "summarize exits 0" test "$rc" -eq 0
check "summarize names the files it wrote" grep -q "wrote $W/grid/summary_over_seeds.csv" <<<"$out"
check "summary.csv written" test -s "$W/grid/summary.csv"
check "summary_over_seeds.csv written" test -s "$W/grid/summary_over_seeds.csv"
ls "$W/grid"/*.tmp* >/dev/null 2>&1 && fail "temporary files left in the grid folder"
"$PY" - "$W/grid" <<'PY' && pass "CSV contents" || fail "CSV contents"
import csv, sys
d = sys.argv[1]
rows = list(csv.DictReader(open(d + "/summary.csv", newline="")))
agg = list(csv.DictReader(open(d + "/summary_over_seeds.csv", newline="")))
need = ["run", "net", "seed", "tp", "dp", "status", "iterations", "final_train_loss",
        "final_eval_loss", "best_eval_loss", "observed_loss_rate", "net_stationary_loss_rate",
        "tokens_per_second", "sim_comm_seconds", "data_entropy_floor", "eval_loss_gap"]
assert all(c in rows[0] for c in need), ("summary header", list(rows[0]))
assert len(rows) == 4, ("rows", len(rows))
assert [r["run"] for r in rows] == ["drop-s1", "drop-s2", "exact-s1", "exact-s2"]
by = {r["run"]: r for r in rows}
for r in rows:
    assert r["status"] == "completed" and r["iterations"] == "6" and r["tp"] == "2", r
    assert r["dp"] == "1" and float(r["data_entropy_floor"]) > 0, r
for s in ("1", "2"):
    e, dr = by["exact-s" + s], by["drop-s" + s]
    assert e["eval_loss_gap"] == "0", e
    gap = float(dr["final_eval_loss"]) - float(e["final_eval_loss"])
    assert abs(float(dr["eval_loss_gap"]) - gap) < 1e-12, (dr, gap)
    assert float(dr["observed_loss_rate"]) > 0 and float(e["observed_loss_rate"]) == 0
    assert dr["net"] == "drop:rate=0.05" and dr["seed"] == s
    # TP=2 ring all-reduces: the same bytes whatever is lost; no DP group
    assert float(e["tp_bytes_per_iteration"]) > 0 and e["tp_bytes_per_iteration"] == dr["tp_bytes_per_iteration"], (e, dr)
    assert float(e["dp_bytes_per_iteration"]) == 0, e
need_agg = ["net", "runs", "completed", "final_eval_loss_mean", "final_eval_loss_std",
            "final_eval_loss_ci95_low", "final_eval_loss_ci95_high", "eval_loss_gap_mean",
            "eval_loss_gap_std", "eval_loss_gap_ci95_low", "eval_loss_gap_ci95_high",
            "gap_ci_contains_zero", "observed_loss_rate_mean", "tp_bytes_per_iteration_mean",
            "dp_bytes_per_iteration_mean"]
assert all(c in agg[0] for c in need_agg), ("aggregate header", list(agg[0]))
assert len(agg) == 2, ("aggregate rows", len(agg))
a = {r["net"]: r for r in agg}
assert a["exact"]["runs"] == "2" and a["exact"]["completed"] == "2", a["exact"]
assert float(a["exact"]["eval_loss_gap_mean"]) == 0 and a["exact"]["gap_ci_contains_zero"] == "true"
g = [float(by["drop-s1"]["eval_loss_gap"]), float(by["drop-s2"]["eval_loss_gap"])]
m = sum(g) / 2
sd = abs(g[0] - g[1]) / 2 ** 0.5
half = 12.706205 * sd / 2 ** 0.5
assert abs(float(a["drop:rate=0.05"]["eval_loss_gap_mean"]) - m) < 1e-12
assert abs(float(a["drop:rate=0.05"]["eval_loss_gap_ci95_high"]) - (m + half)) < 1e-5
assert a["drop:rate=0.05"]["gap_ci_contains_zero"] == ("true" if m - half <= 0 <= m + half else "false")
# replica divergence (new runs log it): 0 where every copy stayed bit-identical (exact), positive
# where lossy ring all-reduces (the default mode) left the TP ranks' replicated parameters apart
for s in ("1", "2"):
    assert by["exact-s" + s]["final_replica_divergence"] == "0", by["exact-s" + s]
    assert float(by["drop-s" + s]["final_replica_divergence"]) > 0, by["drop-s" + s]
assert a["exact"]["final_replica_divergence_mean"] == "0", a["exact"]
assert float(a["drop:rate=0.05"]["final_replica_divergence_mean"]) > 0
print("    csv ok: drop gaps", g)
PY
out=$("$L" summarize "$W/grid" -o "$W/elsewhere/s.csv" --quiet 2>&1); rc=$?
check "summarize -o PATH --quiet: exit 0, silent" test "$rc" -eq 0 -a -z "$out"
check "summarize -o writes PATH and PATH_over_seeds" test -s "$W/elsewhere/s.csv" -a -s "$W/elsewhere/s_over_seeds.csv"

# ---- plot ------------------------------------------------------------------------------------
png_ok() {  # a PNG over 5 kB
  [[ -f $1 ]] && (( $(stat -c %s "$1") > 5000 )) && [[ $(head -c 4 "$1" | tail -c 3) == PNG ]]
}
out=$("$L" plot "$W/grid" 2>&1); rc=$?
echo "$out" | sed 's/^/    /'
check "plot exits 0" test "$rc" -eq 0
for f in loss_curves gap_vs_loss_rate replica_divergence; do
  check "plots/$f.png is a PNG > 5 kB" png_ok "$W/grid/plots/$f.png"
  check "plot reports $f.png" grep -q "wrote $W/grid/plots/$f.png" <<<"$out"
done
check "time_to_target.png for lossy runs too (simulated step time)" png_ok "$W/grid/plots/time_to_target.png"

# A reliable-transport run adds the time-to-target figure; -o picks the folder.
cp -r "$W/grid" "$W/grid2"
train_out=$("$MPIRUN" --oversubscribe --bind-to none -np 2 "$L" train --tp 2 "${small[@]}" \
              --net drop:rate=0.05,transport=reliable --seed 1 --out "$W/grid2/reliable-s1" 2>&1) ||
  fail "train reliable-s1: $train_out"
out=$("$L" plot "$W/grid2" -o "$W/figs" --quiet 2>&1); rc=$?
check "plot -o DIR --quiet: exit 0, silent" test "$rc" -eq 0 -a -z "$out"
for f in loss_curves gap_vs_loss_rate time_to_target; do
  check "figs/$f.png is a PNG > 5 kB" png_ok "$W/figs/$f.png"
done

# Runs whose replicas never diverged (here: exact only) get no divergence figure.
mkdir -p "$W/exact-only"
cp -r "$W/grid/exact-s1" "$W/grid/exact-s2" "$W/exact-only/"
out=$("$L" plot "$W/exact-only" 2>&1)
check "no replica_divergence.png when no replica diverged" grep -q "replica_divergence.png skipped" <<<"$out"

# plot.py runs standalone too.
if [[ -f $SRC/analysis/plot.py ]]; then
  "$PY" "$SRC/analysis/plot.py" "$W/grid" "$W/standalone" >/dev/null 2>&1
  check "python3 analysis/plot.py DIR OUTDIR" png_ok "$W/standalone/loss_curves.png"
fi

# ---- bad input: exit 2, one message, nothing touched ---------------------------------------
expect_error() {  # expect_error "expected text" args...
  local want=$1; shift
  local out rc nerr
  out=$("$L" "$@" 2>&1); rc=$?
  nerr=$(grep -c "lossytp: error:" <<<"$out")
  if [[ $rc -ne 2 || $nerr -ne 1 ]] || ! grep -qF -- "$want" <<<"$out" ||
     grep -qiE "core dumped|MPI_ABORT|segmentation|Traceback" <<<"$out"; then
    fail "$* -> rc=$rc, $nerr error lines, expected '$want'"; echo "$out" | sed 's/^/    /'
  else
    pass "$* -> $(grep "lossytp: error:" <<<"$out")"
  fi
}
mkdir -p empty/sub
expect_error "does not exist" summarize "$W/missing"
expect_error "does not exist" plot "$W/missing"
expect_error "no runs in" summarize "$W/empty"
expect_error "no runs in" plot "$W/empty"
touch afile
expect_error "is not a directory" summarize "$W/afile"
check "no CSV written into an empty folder" test ! -e "$W/empty/summary.csv"
check "no plots folder in an empty folder" test ! -e "$W/empty/plots"

cp -r "$W/grid" "$W/corrupt"
mkdir -p "$W/corrupt/zz-broken"
printf 'this is not HDF5' > "$W/corrupt/zz-broken/metrics.h5"
snapshot() { (cd "$1" && find . | sort && find . -type f -print0 | sort -z | xargs -0 md5sum); }
before=$(snapshot "$W/corrupt")
expect_error "$W/corrupt/zz-broken/metrics.h5" summarize "$W/corrupt"
expect_error "$W/corrupt/zz-broken/metrics.h5" plot "$W/corrupt"
check "a failed summarize/plot leaves the folder as it was" test "$before" == "$(snapshot "$W/corrupt")"

echo "analysis: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
