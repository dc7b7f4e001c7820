#!/usr/bin/python3
"""Markdown table of a grid's summary_over_seeds.csv (written by `lossytp summarize DIR`), as the
studies in docs/studies/ print them.

usage: scripts/study_table.py DIR/summary_over_seeds.csv [--bytes tp|dp]
       scripts/study_table.py DIR/summary.csv --paired NET_A NET_B


One row per configuration: its group columns (swept parameters, net, tp, dp), the completed runs,
the final eval loss (mean and 95 % t interval over seeds), the gap to the exact twin (mean and
interval, in nats), the gap relative to the exact configuration's mean eval loss and as a
perplexity ratio (exp(gap) - 1), the observed loss rate, and with --bytes the bytes per iteration
of that group relative to the exact configuration with the same other parameters.

--paired: from the per-run summary.csv, the difference of the eval-loss gaps of two nets, seed by
seed (the same data order and initialisation), with its mean and 95 % t interval.
"""
import argparse
import csv
import math
import sys


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def fmt(x, digits=3):
    return "" if x is None else f"{x:.{digits}f}"


def t975(df):
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
             10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
    return table.get(df) or table[min(table, key=lambda k: abs(k - df))]


def paired(path, net_a, net_b):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    gaps = {}
    for r in rows:
        g = num(r.get("eval_loss_gap"))
        if g is not None and r.get("status") == "completed":
            gaps.setdefault(r["net"], {})[r["seed"]] = g
    for n in (net_a, net_b):
        if n not in gaps:
            sys.exit(f"{path}: no completed run with net {n!r} (nets: {', '.join(sorted(gaps))})")
    d = [gaps[net_a][s] - gaps[net_b][s] for s in sorted(gaps[net_a]) if s in gaps[net_b]]
    if len(d) < 2:
        sys.exit(f"{path}: fewer than 2 seeds in common")
    m = sum(d) / len(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))
    h = t975(len(d) - 1) * sd / math.sqrt(len(d))
    print(f"{net_a} - {net_b}: {m:+.3f} [{m - h:+.3f}, {m + h:+.3f}] nats over {len(d)} seeds")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--bytes", choices=["tp", "dp"], help="add the bytes per iteration relative to exact")
    ap.add_argument("--paired", nargs=2, metavar="NET", help="summary.csv: gap of NET_A minus NET_B by seed")
    a = ap.parse_args()
    if a.paired:
        return paired(a.csv, *a.paired)
    with open(a.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{a.csv}: no rows")
    first_stat = list(rows[0]).index("runs")
    keys = [k for k in list(rows[0])[:first_stat] if k not in ("dp",) or any(r[k] not in ("", "1") for r in rows)]
    other = [k for k in keys if k != "net"]

    def twin(r):  # the exact row with the same other group values
        for e in rows:
            if e["net"] == "exact" and all(e[k] == r[k] for k in other):
                return e
        return None

    head = keys + ["runs", "eval loss [95 % CI]", "gap (nats) [95 % CI]", "gap / exact loss",
                   "perplexity ratio - 1", "loss rate"]
    if a.bytes:
        head.append(f"{a.bytes.upper()} bytes / exact")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        e = twin(r)
        gap = num(r["eval_loss_gap_mean"])
        base = num(e["final_eval_loss_mean"]) if e else None
        cells = [r[k] if k != "data" else (r[k].split("/")[-1].rsplit(".", 1)[0] or "builtin") for k in keys]
        cells.append(f"{r['completed']}/{r['runs']}")
        cells.append(f"{fmt(num(r['final_eval_loss_mean']))} [{fmt(num(r['final_eval_loss_ci95_low']))}, "
                     f"{fmt(num(r['final_eval_loss_ci95_high']))}]")
        cells.append(f"{fmt(gap)} [{fmt(num(r['eval_loss_gap_ci95_low']))}, {fmt(num(r['eval_loss_gap_ci95_high']))}]"
                     if gap is not None else "")
        cells.append(f"{100 * gap / base:+.1f} %" if gap is not None and base else "")
        cells.append(f"{100 * (math.exp(gap) - 1):+.1f} %" if gap is not None else "")
        olr = num(r.get("observed_loss_rate_mean"))
        cells.append(f"{100 * olr:.2f} %" if olr is not None else "")
        if a.bytes:
            col = f"{a.bytes}_bytes_per_iteration_mean"
            mine, ref = num(r.get(col)), num(e.get(col)) if e else None
            cells.append(f"{mine / ref:.3f}" if mine is not None and ref else "")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
