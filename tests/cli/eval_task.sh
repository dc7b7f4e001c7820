#!/usr/bin/env bash
# --eval-task end to end: a synthetic multiple-choice task (byte-level "k=v;" pairs with a fixed
# mapping k -> v; the choices are 4 values, one of them f(k)) that a small model learns in a few
# hundred steps: accuracy starts near chance (0.25) and ends well above it; /eval/accuracy rows
# match /eval/iteration; TP=2 scores as TP=1; summarize and plot show it. Bad task files stop
# the run before training with exit status 2, one message naming file:line, nothing written.
# usage: eval_task.sh path/to/lossytp workdir
set -u
L=$1; W=$2
MPIRUN=${MPIRUN:-mpirun}
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3
rm -rf "$W"; mkdir -p "$W"; cd "$W"
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }

"$PY" - <<'PY'
import json, random
random.seed(3)
keys = "abcdefghijklmnop"
vals = list("ABCDEFGHIJKLMNOP"); random.shuffle(vals)
f = dict(zip(keys, vals))
pair = lambda k: k + "=" + f[k] + ";"
with open("corpus.txt", "w") as out:
    out.write("".join(pair(random.choice(keys)) for _ in range(50000)))
with open("task.jsonl", "w") as out:
    for i in range(200):
        k = random.choice(keys)
        ctx = "".join(pair(random.choice(keys)) for _ in range(random.randint(0, 3))) + k + "="
        choices = random.sample([v for v in vals if v != f[k]], 3) + [f[k]]
        random.shuffle(choices)
        out.write(json.dumps({"context": list(ctx.encode()),
                              "choices": [list((c + ";").encode()) for c in choices],
                              "label": choices.index(f[k])}) + "\n")
        if i == 10:
            out.write("\n")  # blank lines are skipped
PY

small=(--data corpus.txt --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32
       --micro-batch-size 8 --lr 0.003 --threads 1)

# --- bad task files: exit 2, one error naming file:line, nothing written ----------------------
good='{"context": [97, 61], "choices": [[65, 59], [66, 59]], "label": 0}'
bad_case() {  # bad_case NAME "line 2 of the file" "expected text"
  local name=$1 line=$2 want=$3 out rc
  printf '%s\n%s\n%s\n' "$good" "$line" "$good" > "$name.jsonl"
  out=$("$MPIRUN" --oversubscribe --bind-to none -np 2 "$L" train "${small[@]}" --tp 2 --train-iters 5 \
        --eval-task "$name.jsonl" --out "out-$name" 2>&1); rc=$?
  local nerr; nerr=$(grep -c "lossytp: error:" <<<"$out")
  if [[ $rc -ne 2 ]] || [[ $nerr -ne 1 ]] || ! grep -qF -- "eval task $name.jsonl:2: $want" <<<"$out" ||
     grep -qiE "core dumped|MPI_ABORT|segmentation" <<<"$out"; then
    fail "$name: rc=$rc, $nerr error lines, expected 'eval task $name.jsonl:2: $want'"; echo "$out" | sed 's/^/    /'
  else
    echo "ok: $name -> $(grep "lossytp: error:" <<<"$out")"
  fi
  [[ -e "out-$name" ]] && fail "$name: out-$name/ was created"
}
bad_case malformed '{"context": [97, 61], "choices": [[65], [66]], "label": 0' "not valid JSON"
bad_case label '{"context": [97, 61], "choices": [[65], [66]], "label": 2}' "label 2 is out of range for 2 choices"
bad_case vocab '{"context": [97, 300], "choices": [[65], [66]], "label": 0}' \
  "context[1] = 300 is outside the model's vocabulary [0, 256)"
long=$("$PY" -c 'print(list(range(65, 98)))')  # 33 tokens > --seq-length 32
bad_case long "{\"context\": [97], \"choices\": [[65], $long], \"label\": 0}" \
  "choices[1] has 33 tokens, more than --seq-length 32"
out=$("$L" train "${small[@]}" --eval-task missing.jsonl --out out-missing 2>&1); rc=$?
[[ $rc -eq 2 ]] && grep -qF "eval task missing.jsonl: cannot be read" <<<"$out" || fail "missing file: rc=$rc: $out"
[[ -e out-missing ]] && fail "out-missing/ was created"
# in a grid: the bad run is named, nothing is written
cat > grid.toml <<TOML
[base]
data = "corpus.txt"
num-layers = 1
hidden-size = 32
num-attention-heads = 4
seq-length = 32
train-iters = 2
eval-task = "label.jsonl"
[sweep]
seed = [1, 2]
TOML
out=$("$L" grid grid.toml --out grid-out 2>&1); rc=$?
[[ $rc -eq 2 ]] && grep -qF "label.jsonl:2: label 2 is out of range" <<<"$out" || fail "grid: rc=$rc: $out"
[[ -e grid-out ]] && fail "grid-out/ was created"

# --- learning the task: near chance first, well above at the end ------------------------------
out=$("$L" train "${small[@]}" --train-iters 300 --eval-interval 25 --eval-iters 2 --log-interval 25 \
      --eval-task task.jsonl --out run 2>&1); rc=$?
echo "$out"
[[ $rc -eq 0 ]] || fail "training exited $rc"
accs=$(grep -o "| acc [0-9.]*" <<<"$out" | awk '{print $3}')
[[ $(wc -l <<<"$accs") -eq 12 ]] || fail "expected 12 evaluations with an accuracy, got: $accs"
first=$(head -1 <<<"$accs"); last=$(tail -1 <<<"$accs")
awk -v a="$first" 'BEGIN { exit !(a <= 0.45) }' || fail "first accuracy $first is not near chance (0.25)"
awk -v a="$last" 'BEGIN { exit !(a >= 0.8) }' || fail "final accuracy $last < 0.8"
echo "accuracy: first $first, final $last (chance 0.25)"

# --- TP=2 scores as TP=1 (same weights up to float rounding) ----------------------------------
short=(--train-iters 50 --eval-interval 25 --eval-iters 1 --log-interval 25 --eval-task task.jsonl)
a1=$("$L" train "${small[@]}" "${short[@]}" --out tp1 2>&1 | grep -o "| acc [0-9.]*")
a2=$("$MPIRUN" --oversubscribe --bind-to none -np 2 "$L" train "${small[@]}" "${short[@]}" --tp 2 --out tp2 2>&1 |
     grep -o "| acc [0-9.]*")
[[ -n $a1 && "$a1" == "$a2" ]] || fail "TP=2 accuracy '$a2' differs from TP=1 '$a1'"
echo "TP=1: $(echo $a1), TP=2: $(echo $a2)"

# --- summarize and plot ------------------------------------------------------------------------
"$L" summarize run --quiet || fail "summarize exited $?"
"$PY" - "$last" <<'PY' || fail "summary.csv lacks the final accuracy"
import csv, sys
row = next(csv.DictReader(open("run/summary.csv")))
assert abs(float(row["final_accuracy"]) - float(sys.argv[1])) < 1e-3, row
assert row["accuracy_gap"] == "0", row  # an exact run is its own twin
assert 0 <= float(row["final_accuracy_norm"]) <= 1, row
print("ok: summary.csv final_accuracy", row["final_accuracy"], "final_accuracy_norm", row["final_accuracy_norm"])
PY
out=$("$L" plot run 2>&1); rc=$?
if [[ $rc -eq 3 ]]; then
  echo "note: plot skipped (missing Python modules)"
elif [[ $rc -ne 0 ]] || [[ ! -s run/plots/accuracy.png ]]; then
  fail "plot: rc=$rc, no run/plots/accuracy.png: $out"
fi

# --- metrics.h5: /eval/accuracy rows aligned with /eval/iteration --------------------------------
if ! "$PY" -c "import h5py" 2>/dev/null; then
  [[ $fails -eq 0 ]] || { echo "$fails check(s) failed"; exit 1; }
  echo "SKIPPED: the metrics.h5 checks need h5py in $PY (apt-get install python3-h5py)"; exit 77
fi
"$PY" - "$last" <<'PY' || fail "metrics.h5 accuracy rows"
import sys, h5py
with h5py.File("run/metrics.h5", "r") as f:
    it, acc, norm = f["eval/iteration"][:], f["eval/accuracy"][:], f["eval/accuracy_norm"][:]
    assert list(it) == list(range(25, 301, 25)), list(it)
    assert len(acc) == len(it) == len(norm) == len(f["eval/loss"]), (len(acc), len(norm))
    assert abs(acc[-1] - float(sys.argv[1])) < 1e-3, acc
    assert all(0 <= a <= 1 for a in list(acc) + list(norm))
print("ok: /eval/accuracy", [round(float(a), 3) for a in acc])
PY

[[ $fails -eq 0 ]] || { echo "$fails check(s) failed"; exit 1; }
echo "eval_task: all checks passed"
