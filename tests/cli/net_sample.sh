#!/usr/bin/env bash
# `lossytp net sample`: observed loss statistics next to theory, as text and as JSON.
# usage: net_sample.sh path/to/lossytp workdir
set -eu
L=$1; W=$2
rm -rf "$W"; mkdir -p "$W"; cd "$W"
fail() { echo "FAIL: $*"; exit 1; }
out=$("$L" net sample --net ge:preset=one --packets 2000000 --seed 3)
echo "$out"
grep -q "loss rate" <<<"$out" && grep -q "mean burst length" <<<"$out" || fail "table rows missing"
"$L" net sample --net ge:preset=default,step=message --packets 4000000 --message-packets 64 --json > s.json
/usr/bin/python3 - <<'PY' || fail "json check"
import json
s = json.load(open("s.json"))
p, r = 0.05, 0.45
assert abs(s["theoretical_loss_rate"] - p / (p + r)) < 1e-12, s
assert abs(s["observed_loss_rate"] / s["theoretical_loss_rate"] - 1) < 0.03, s
assert s["message_packets"] == 64 and s["packets"] == 4000000
print("json ok:", s["observed_loss_rate"], s["theoretical_loss_rate"])
PY
echo "net sample: 1 passed, 0 failed"
