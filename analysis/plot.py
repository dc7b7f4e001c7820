#!/usr/bin/env python3
"""lossytp plot: figures from a folder of runs (what `lossytp plot DIR [-o OUTDIR]` runs).

usage: python3 plot.py DIR [OUTDIR]          (OUTDIR defaults to DIR/plots)

DIR is a folder of runs, DIR/<run-id>/metrics.h5 (or one run folder). Writes into OUTDIR:

  loss_curves.png       train loss (solid) and eval loss (dashed) vs iteration, one colour per
                        network model, median over seeds with a min-max band; the exact runs in
                        black; the data's entropy floor dotted when it is known.
  gap_vs_loss_rate.png  final eval loss minus the exact twin's vs observed packet loss rate, one
                        colour and marker per model family; small points are seeds, large ones
                        the mean over seeds.
  accuracy.png          only when a run has /eval/accuracy (--eval-task): downstream accuracy
                        (solid) and length-normalised accuracy (dotted) vs iteration, one colour
                        per network model, median over seeds with a min-max band.
  replica_divergence.png  only when a run has /divergence/replica_divergence and some replica
                        diverged: the largest relative L2 distance between ranks' copies of a
                        replicated parameter vs iteration (symlog axis; 0 = bit-identical), one
                        colour per network model, median over seeds with a min-max band.
  time_to_target.png    train loss vs cumulative simulated step time (measured compute + simulated
                        communication: link times, retransmissions, deadlines; pipeline runs: the
                        timeline with its bubble), and the time each model needs to reach the
                        target loss = 1.05 x the exact runs' final train loss. Runs without
                        /train/sim_step_s (older ones) use the communication time alone.

Prints "wrote PATH" per figure and "note: ..." for figures it skips. Exit status: 0 ok, 2 bad
input (message on stderr), 3 missing Python modules. CMake compiles this file into the lossytp
binary (analysis/plot_script.h), so `lossytp plot` needs no source tree.
"""
import json
import math
import os
import sys
import warnings


def fail(message, code=2):
    print("error: " + message, file=sys.stderr)
    sys.exit(code)


try:
    import numpy as np
    import h5py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
except ImportError as exc:
    missing = []
    for module in ("numpy", "h5py", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    print("missing Python modules: %s (python %s); install them with scripts/install-deps.sh"
          % (", ".join(missing) or str(exc), sys.executable), file=sys.stderr)
    sys.exit(3)

FIXED = ("net", "seed", "tp", "dp")
FINAL_WINDOW = 10          # final train loss = mean of the last min(10, n) train losses
TARGET_FACTOR = 1.05       # time-to-target: target = 1.05 x the exact runs' final train loss
DPI = 150


# ------------------------------------------------------------------------------------------
# Reading runs (the same rules as analysis/summary.cpp)

def normalize_param(key):
    return {"tensor-model-parallel-size": "tp", "data-parallel-size": "dp"}.get(key, key)


def config_key(param):
    return {"tp": "tensor-model-parallel-size", "dp": "data-parallel-size"}.get(param, param)


def format_value(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isfinite(v) and float(np.float32(v)) == v:
            return str(np.float32(v))
        return repr(v)
    if isinstance(v, str):
        return v
    return json.dumps(v)


def is_exact(net):
    return bool(net) and all(m.split(":")[0] == "exact" for m in net.split("+"))


def family(net):
    names = []
    for m in net.split("+"):
        name = m.split(":")[0]
        if name and name not in names:
            names.append(name)
    if len(names) > 1 and "exact" in names:
        names.remove("exact")
    return "+".join(names)


OPERATIONAL = ("out", "threads", "log-interval", "save-interval", "comm-timeout", "load")


def twin_key(config):
    """twins: same config except net, net-only keys and keys that change how, not what, a run
    computes"""
    c = {k: v for k, v in config.items()
         if not (k == "net" or k.startswith("net-") or k.startswith("net_") or k in OPERATIONAL)}
    return json.dumps(c, sort_keys=True)


def find_run_dirs(d):
    if not os.path.exists(d):
        fail("'%s' does not exist" % d)
    if not os.path.isdir(d):
        fail("'%s' is not a directory" % d)
    out = []
    if os.path.exists(os.path.join(d, "metrics.h5")):
        out.append((os.path.basename(os.path.normpath(os.path.abspath(d))) or ".", d))
    try:
        names = os.listdir(d)
    except OSError as e:
        fail("cannot read directory '%s': %s" % (d, e.strerror))
    subs = sorted(n for n in names
                  if not n.startswith(".") and os.path.isdir(os.path.join(d, n))
                  and os.path.exists(os.path.join(d, n, "metrics.h5")))
    out += [(n, os.path.join(d, n)) for n in subs]
    if not out:
        fail("no runs in '%s': neither it nor any of its subfolders holds a metrics.h5" % d)
    return out


def as_str(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str) else str(v)


def as_float(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x


def clean(a):
    """float array with +-inf replaced by nan"""
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, np.nan)


def load_run(run_id, folder):
    path = os.path.join(folder, "metrics.h5")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs[k] for k in f.attrs.keys()}

            def series(name):
                return np.asarray(f[name][()], dtype=float) if name in f else None

            train_it, train_loss = series("train/iteration"), series("train/loss")
            eval_it, eval_loss = series("eval/iteration"), series("eval/loss")
            sim_comm = series("train/sim_comm_s")
            sim_step = series("train/sim_step_s")
            acc, acc_norm = series("eval/accuracy"), series("eval/accuracy_norm")
            div_it, div = series("divergence/iteration"), series("divergence/replica_divergence")
    except Exception as e:  # noqa: BLE001 - any failure to read is the user's to see
        fail("metrics file %s: cannot be read (%s)" % (path, e))
    config = {}
    if "config" in attrs:
        try:
            config = json.loads(as_str(attrs["config"]))
        except ValueError as e:
            fail("metrics file %s: attribute 'config' is not valid JSON: %s" % (path, e))
        if not isinstance(config, dict):
            fail("metrics file %s: attribute 'config' is not a JSON object" % path)
    net = as_str(attrs["net"]) if "net" in attrs else str(config.get("net", ""))
    r = {
        "id": run_id, "config": config, "net": net,
        "status": as_str(attrs["status"]) if "status" in attrs else "",
        "seed": config.get("seed"),
        "tp": config.get("tensor-model-parallel-size"),
        "dp": config.get("data-parallel-size"),
        "train_it": train_it, "train_loss": train_loss, "eval_it": eval_it, "eval_loss": eval_loss,
        "sim_comm": sim_comm, "sim_step": sim_step, "acc": acc, "acc_norm": acc_norm, "div_it": div_it, "div": div,
        "floor": as_float(attrs["data_entropy_floor"]) if "data_entropy_floor" in attrs else None,
        "loss_rate": as_float(attrs["observed_loss_rate"]) if "observed_loss_rate" in attrs else None,
    }
    if train_loss is not None and train_it is None:
        r["train_it"] = np.arange(1, len(train_loss) + 1, dtype=float)
    if eval_loss is not None and eval_it is None:
        r["eval_it"] = np.arange(1, len(eval_loss) + 1, dtype=float)
    n = 0 if train_loss is None else len(train_loss)
    r["final_train"] = float(np.mean(train_loss[n - min(FINAL_WINDOW, n):])) if n else None
    r["final_eval"] = float(eval_loss[-1]) if eval_loss is not None and len(eval_loss) else None
    return r


def read_grid(d):
    path = os.path.join(d, "grid.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            g = json.load(f)
    except (OSError, ValueError) as e:
        fail("'%s' is not valid JSON: %s" % (path, e))
    if not isinstance(g, dict) or not isinstance(g.get("runs"), list):
        fail("'%s' has no \"runs\" list" % path)
    runs, keys = {}, []
    for e in g["runs"]:
        if not isinstance(e, dict) or "id" not in e:
            continue
        swept = {normalize_param(k): v for k, v in (e.get("swept") or {}).items()}
        for k in swept:
            if k not in keys:
                keys.append(k)
        runs[str(e["id"])] = {"status": e.get("status") or "", "swept": swept}
    return {"runs": runs, "keys": keys}


def load_dir(d):
    runs = [load_run(i, p) for i, p in find_run_dirs(d)]
    grid = read_grid(d)
    if grid and grid["keys"]:
        params = [k for k in grid["keys"] if k not in FIXED]
    else:
        keys = sorted(set().union(*[set(r["config"]) for r in runs]))
        params = []
        for k in keys:
            p = normalize_param(k)
            if k in ("out", "threads") or p in FIXED:
                continue
            if len({format_value(r["config"].get(k)) for r in runs}) > 1:
                params.append(p)
    for r in runs:
        g = (grid or {"runs": {}})["runs"].get(r["id"])
        swept = g["swept"] if g else {}
        r["params"] = {p: format_value(swept[p] if p in swept else r["config"].get(config_key(p)))
                       for p in params}
        for k in FIXED:
            if (r[k] in (None, "")) and k in swept:
                r[k] = swept[k]
        if g and g["status"] and r["status"] in ("", "running"):
            r["status"] = g["status"]
    # Facets: parameters other than net and seed that vary (tp, dp included when they vary).
    facet_keys = list(params) + [k for k in ("tp", "dp") if len({str(r[k]) for r in runs}) > 1]
    for r in runs:
        r["facet"] = tuple((k, r["params"][k] if k in r["params"] else format_value(r[k]))
                           for k in facet_keys)
    # Gaps against the exact twin (same config except net, out, threads; same seed).
    exact = {}
    for r in sorted(runs, key=lambda r: (r["status"] != "completed", r["id"])):
        if is_exact(r["net"]) and r["final_eval"] is not None:
            exact.setdefault(twin_key(r["config"]), r)
    for r in runs:
        r["gap"] = None
        if r["final_eval"] is None:
            continue
        if is_exact(r["net"]):
            r["gap"] = 0.0
        elif twin_key(r["config"]) in exact:
            r["gap"] = r["final_eval"] - exact[twin_key(r["config"])]["final_eval"]
    return runs


# ------------------------------------------------------------------------------------------
# Helpers

def facet_label(facet):
    def value(k, v):  # a data file by its name, the built-in corpus as such (as grid ids do)
        if k in ("data", "eval-data"):
            return os.path.splitext(os.path.basename(str(v)))[0] if v else "builtin"
        return v
    return ", ".join("%s=%s" % (k, value(k, v)) for k, v in facet)


def net_order(runs):
    """distinct nets: exact first, then by family, stationary loss, text"""
    nets = sorted({r["net"] for r in runs},
                  key=lambda n: (not is_exact(n), family(n), n))
    return nets


def net_colours(nets):
    cmap = plt.get_cmap("tab10" if len(nets) <= 11 else "tab20")
    colours, i = {}, 0
    for n in nets:
        if is_exact(n):
            colours[n] = "black"
        else:
            colours[n] = cmap(i % cmap.N)
            i += 1
    return colours


def trailing_mean(values, window):
    v = clean(values)
    if window <= 1 or len(v) == 0:
        return v
    cs = np.cumsum(np.nan_to_num(v))
    cnt = np.cumsum(np.isfinite(v))
    out = np.empty_like(v)
    for i in range(len(v)):
        j = i - window
        s = cs[i] - (cs[j] if j >= 0 else 0.0)
        c = cnt[i] - (cnt[j] if j >= 0 else 0)
        out[i] = s / c if c else np.nan
    out[~np.isfinite(v)] = np.nan  # a diverged point stays a gap
    return out


def band(pairs):
    """pairs of (iterations, values) -> iterations, median, min, max over runs"""
    pairs = [(np.asarray(i), np.asarray(v)) for i, v in pairs if i is not None and v is not None]
    if not pairs:
        return None
    its = np.unique(np.concatenate([i for i, _ in pairs]))
    m = np.full((len(pairs), len(its)), np.nan)
    for row, (i, v) in enumerate(pairs):
        n = min(len(i), len(v))
        m[row, np.searchsorted(its, i[:n])] = clean(v[:n])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return its, np.nanmedian(m, axis=0), np.nanmin(m, axis=0), np.nanmax(m, axis=0)


def grid_shape(n):
    cols = min(n, 3)
    return (n + cols - 1) // cols, cols


def save(fig, outdir, name):
    path = os.path.join(outdir, name)
    tmp = os.path.join(outdir, "." + name + ".tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    print("wrote " + path)
    return path


def seeds_text(k):
    return "%d seed%s" % (k, "" if k == 1 else "s")


def fmt_seconds(t):
    if t is None or not math.isfinite(t):
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if abs(t) >= scale or unit == "ns":
            return "%.3g %s" % (t / scale, unit)
    return "%.3g s" % t


# ------------------------------------------------------------------------------------------
# 1. loss curves

def plot_loss_curves(runs, outdir):
    nets = net_order(runs)
    colours = net_colours(nets)
    facets = sorted({r["facet"] for r in runs})
    rows, cols = grid_shape(len(facets))
    fig, axes = plt.subplots(rows, cols, figsize=(7.0 * cols, 4.6 * rows), squeeze=False,
                             sharey=True)
    longest = max((len(r["train_loss"]) for r in runs if r["train_loss"] is not None), default=0)
    window = max(1, longest // 20) if longest >= 60 else 1
    handles, labels = [], []
    floors = sorted({round(r["floor"], 6) for r in runs
                     if r["floor"] is not None and math.isfinite(r["floor"])})
    any_eval = any(r["eval_loss"] is not None and len(r["eval_loss"]) for r in runs)
    any_band = False
    plotted, late = [], []  # plotted values, and those after the first 10 % of iterations
    for ax, facet in zip(axes.flat, facets):
        in_facet = [r for r in runs if r["facet"] == facet]
        for net in nets:
            group = [r for r in in_facet if r["net"] == net]
            if not group:
                continue
            c = colours[net]
            # The exact curve is drawn wide and underneath: a model that matches it (a reliable
            # transport) shows as its colour on a black outline instead of disappearing.
            z = 2.5 if is_exact(net) else 3
            tr = band([(r["train_it"], trailing_mean(r["train_loss"], window)) for r in group])
            if tr is not None:
                it, med, lo, hi = tr
                ax.plot(it, med, color=c, lw=2.6 if is_exact(net) else 1.4, zorder=z)
                plotted.append(med)
                late.append(med[len(med) // 10:])
                if len(group) > 1:
                    plotted += [lo, hi]
                    late += [lo[len(lo) // 10:], hi[len(hi) // 10:]]
                if len(group) > 1:
                    ax.fill_between(it, lo, hi, color=c, alpha=0.15, lw=0, zorder=z - 2)
                    any_band = True
            ev = band([(r["eval_it"], r["eval_loss"]) for r in group])
            if ev is not None and len(ev[0]):
                it, med, lo, hi = ev
                ax.plot(it, med, color=c, lw=2.2 if is_exact(net) else 1.3, ls="--", marker="o",
                        ms=5 if is_exact(net) else 3.5, zorder=z)
                plotted.append(med)
                late.append(med)
                if len(group) > 1:
                    plotted += [lo, hi]
                    late += [lo, hi]
                if len(group) > 1:
                    ax.fill_between(it, lo, hi, color=c, alpha=0.08, lw=0, zorder=z - 2)
            others = {}
            for r in group:
                if r["status"] != "completed":
                    others[r["status"] or "no status"] = others.get(r["status"] or "no status", 0) + 1
            label = "%s (%s%s)" % (net, seeds_text(len(group)),
                                   "".join("; %d %s" % (k, st) for st, k in sorted(others.items())))
            if label not in labels:
                labels.append(label)
                handles.append(Line2D([], [], color=c, lw=2.6 if is_exact(net) else 2))
        ax.set_xlabel("iteration (optimizer steps)")
        if facet:
            ax.set_title(facet_label(facet), fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(facets):]:
        ax.set_visible(False)
    ylabel = "loss (nats/token)"
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    # The y range: what is plotted, without the first iterations (loss near ln(vocab)) when they
    # would squash the rest, and with the entropy floor when it is near enough to be useful.
    shown_floors, hidden_floors = list(floors), []
    vals = np.concatenate([a[np.isfinite(a)] for a in plotted]) if plotted else np.array([])
    if len(vals):
        lo, hi = float(vals.min()), float(vals.max())
        late_vals = np.concatenate([a[np.isfinite(a)] for a in late]) if late else np.array([])
        if longest >= 20 and len(late_vals):
            top = float(np.percentile(late_vals, 99.5))
            if hi > top + 0.5 * max(top - lo, 1e-6):
                hi = top
        span = max(hi - lo, 1e-3)
        shown_floors = [f for f in floors if f >= lo - span]
        hidden_floors = [f for f in floors if f < lo - span]
        bottom = min([lo] + shown_floors)
        full = max(hi - bottom, 1e-3)
        axes[0, 0].set_ylim(bottom - 0.05 * full, hi + 0.08 * full)
    for ax, facet in zip(axes.flat, facets):
        # a panel's floor only when its runs have it (text data has none)
        mine = {round(r["floor"], 6) for r in runs if r["facet"] == facet and r["floor"] is not None}
        for fl in [f for f in shown_floors if f in mine]:
            ax.axhline(fl, color="dimgray", ls=":", lw=1.4, zorder=1)
            ax.annotate("entropy floor (%.2f nats)" % fl, xy=(1.0, fl),
                        xycoords=("axes fraction", "data"), xytext=(-4, 3),
                        textcoords="offset points", ha="right", va="bottom", fontsize=8,
                        color="dimgray")
    style = [Line2D([], [], color="gray", lw=1.6, label="train loss, median over seeds" +
                    (" (mean of last %d iterations)" % window if window > 1 else ""))]
    if any_eval:
        style.append(Line2D([], [], color="gray", lw=1.4, ls="--", marker="o", ms=3.5,
                            label="eval loss (held-out), median over seeds"))
    if any_band:
        style.append(Patch(color="gray", alpha=0.25, label="band: min–max over seeds"))
    if shown_floors:
        style.append(Line2D([], [], color="dimgray", ls=":", lw=1.4,
                            label="entropy floor of the data (lowest possible loss)"))
    for fl in hidden_floors:
        style.append(Line2D([], [], color="none", label="entropy floor (%.2f nats): below the "
                            "plotted range" % fl))
    leg_handles = handles + [Line2D([], [], color="none")] + style
    leg_labels = labels + [""] + [h.get_label() for h in style]
    fig.legend(leg_handles, leg_labels, loc="upper left", bbox_to_anchor=(1.0, 0.93),
               title="network model (--net)", fontsize=8.5, title_fontsize=9, frameon=False)
    fig.suptitle("Training and evaluation loss by network model (exact = black)", fontsize=12)
    fig.tight_layout()
    return save(fig, outdir, "loss_curves.png")


# ------------------------------------------------------------------------------------------
# 2. gap vs observed loss rate

FAMILY_STYLE = {"exact": ("black", "o"), "drop": ("tab:blue", "s"), "ge": ("tab:orange", "^"),
                "caat": ("tab:green", "D"), "caat+ge": ("tab:red", "v"),
                "caat+drop": ("tab:purple", "P")}
EXTRA_STYLES = [("tab:brown", "X"), ("tab:pink", "p"), ("tab:olive", "h"), ("tab:cyan", "*"),
                ("tab:gray", "<"), ("tab:purple", ">")]


def family_style(fam, assigned):
    if fam in FAMILY_STYLE:
        return FAMILY_STYLE[fam]
    if fam not in assigned:
        assigned[fam] = EXTRA_STYLES[len(assigned) % len(EXTRA_STYLES)]
    return assigned[fam]


def spread_labels(ax, items, line_pt=9.0):
    """items: (x, y, text, colour) in data coordinates. Places each text right of its point (left
    of it when it would leave the axes), moving labels down until none overlaps another."""
    fig = ax.figure
    fig.canvas.draw()
    scale = 72.0 / fig.dpi
    right_edge = ax.get_window_extent().x1 * scale
    placed = []  # (x0, x1, y) in points
    for x, y, text, colour in sorted(items, key=lambda it: -it[1]):
        px, py = ax.transData.transform((x, y)) * scale
        width = 4.2 * len(text)
        left = px + 8 + width > right_edge
        x0, x1 = (px - 8 - width, px - 8) if left else (px + 8, px + 8 + width)
        ly = py + 3
        moved = True
        while moved:
            moved = False
            for a0, a1, b in placed:
                if x0 < a1 and a0 < x1 and abs(ly - b) < line_pt:
                    ly = b - line_pt
                    moved = True
        placed.append((x0, x1, ly))
        ax.annotate(text, (x, y), xytext=(-8 if left else 8, ly - py), textcoords="offset points",
                    fontsize=7, color=colour, va="center", ha="right" if left else "left",
                    arrowprops=None if abs(ly - py - 3) < 1 else
                    dict(arrowstyle="-", color=colour, lw=0.5, alpha=0.6, shrinkA=0, shrinkB=3))


def plot_gap(runs, outdir):
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    pts = [r for r in runs if r["status"] == "completed" and r["gap"] is not None
           and r["loss_rate"] is not None and math.isfinite(r["gap"])]
    ax.axhline(0.0, color="dimgray", lw=1.0, zorder=1)
    extra = {}
    families = []
    groups = {}
    for r in pts:
        groups.setdefault((r["net"], r["facet"]), []).append(r)
    labels = []
    for (net, facet), group in sorted(groups.items(),
                                      key=lambda kv: (not is_exact(kv[0][0]), family(kv[0][0]),
                                                      kv[0])):
        fam = family(net)
        c, m = family_style(fam, extra)
        if fam not in families:
            families.append(fam)
        z = 5 if is_exact(net) else 3
        x = np.array([100.0 * r["loss_rate"] for r in group])
        y = np.array([r["gap"] for r in group])
        if len(group) > 1:
            ax.scatter(x, y, s=22, color=c, marker=m, alpha=0.45, lw=0, zorder=z)
        ax.scatter([x.mean()], [y.mean()], s=90, color=c, marker=m, edgecolors="black",
                   linewidths=0.8, zorder=z + 1)
        if not is_exact(net):
            text = net if not facet else "%s (%s)" % (net, facet_label(facet))
            if len(text) > 60:
                text = text[:58] + "…"
            labels.append((x.mean(), y.mean(), text, c))
    if not pts:
        ax.text(0.5, 0.5, "no completed lossy run with an exact twin\n(same config and seed, "
                "--net exact)", transform=ax.transAxes, ha="center", va="center", fontsize=10,
                color="dimgray")
    ax.set_xlabel("observed packet loss rate (% of packets exposed to the network model)")
    ax.set_ylabel("final eval loss − exact twin's (nats/token)")
    ax.set_title("Eval-loss gap to the exact run with the same config and seed", fontsize=12)
    ax.grid(True, alpha=0.3)
    lo, hi = ax.get_xlim()
    ax.set_xlim(min(lo, -0.03 * max(hi, 1e-9)), hi + 0.1 * (hi - lo))
    handles = [Line2D([], [], color=family_style(f, extra)[0], marker=family_style(f, extra)[1],
                      ls="none", ms=8, markeredgecolor="black", label=f) for f in families]
    handles += [Line2D([], [], color="none", label=""),
                Line2D([], [], color="gray", marker="o", ls="none", ms=5, alpha=0.5,
                       label="one run (one seed)"),
                Line2D([], [], color="gray", marker="o", ls="none", ms=9, markeredgecolor="black",
                       label="mean over seeds"),
                Line2D([], [], color="dimgray", lw=1.0, label="0 = same loss as exact")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              title="model family", fontsize=8.5, title_fontsize=9)
    fig.tight_layout()
    spread_labels(ax, labels)
    return save(fig, outdir, "gap_vs_loss_rate.png")


# ------------------------------------------------------------------------------------------
# 3. downstream accuracy (--eval-task)

def plot_accuracy(runs, outdir):
    usable = [r for r in runs if r["acc"] is not None and len(r["acc"]) and r["eval_it"] is not None]
    if not usable:
        print("note: accuracy.png skipped: no run has /eval/accuracy (train with --eval-task)")
        return None
    nets = net_order(usable)
    colours = net_colours(nets)
    facets = sorted({r["facet"] for r in usable})
    rows, cols = grid_shape(len(facets))
    fig, axes = plt.subplots(rows, cols, figsize=(7.0 * cols, 4.6 * rows), squeeze=False,
                             sharey=True)
    handles, labels = [], []
    any_band = any_norm = False
    for ax, facet in zip(axes.flat, facets):
        in_facet = [r for r in usable if r["facet"] == facet]
        for net in nets:
            group = [r for r in in_facet if r["net"] == net]
            if not group:
                continue
            c = colours[net]
            z = 2.5 if is_exact(net) else 3
            for key, ls in (("acc", "-"), ("acc_norm", ":")):
                # rows of eval/accuracy are those of eval/iteration (NaN where not evaluated)
                b = band([(r["eval_it"], r[key]) for r in group if r[key] is not None])
                if b is None or not len(b[0]):
                    continue
                it, med, lo, hi = b
                ax.plot(it, med, color=c, ls=ls, marker="o" if ls == "-" else None, ms=3.5,
                        lw=2.2 if is_exact(net) else 1.4, zorder=z)
                any_norm = any_norm or key == "acc_norm"
                if len(group) > 1:
                    ax.fill_between(it, lo, hi, color=c, alpha=0.12, lw=0, zorder=z - 2)
                    any_band = True
            label = "%s (%s)" % (net, seeds_text(len(group)))
            if label not in labels:
                labels.append(label)
                handles.append(Line2D([], [], color=c, lw=2.2 if is_exact(net) else 2))
        ax.set_xlabel("iteration (optimizer steps)")
        if facet:
            ax.set_title(facet_label(facet), fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(facets):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (fraction of examples)")
    style = [Line2D([], [], color="gray", lw=1.6, marker="o", ms=3.5,
                    label="accuracy (largest log-likelihood), median over seeds")]
    if any_norm:
        style.append(Line2D([], [], color="gray", lw=1.6, ls=":",
                            label="length-normalised (per choice token)"))
    if any_band:
        style.append(Patch(color="gray", alpha=0.25, label="band: min–max over seeds"))
    fig.legend(handles + [Line2D([], [], color="none")] + style,
               labels + [""] + [h.get_label() for h in style], loc="upper left",
               bbox_to_anchor=(1.0, 0.93), title="network model (--net)", fontsize=8.5,
               title_fontsize=9, frameon=False)
    fig.suptitle("Downstream accuracy (--eval-task) by network model (exact = black)", fontsize=12)
    fig.tight_layout()
    return save(fig, outdir, "accuracy.png")


# ------------------------------------------------------------------------------------------
# 3b. replica divergence (/divergence/*: lossy rings on replicated data, a lossy dp.param)

def plot_divergence(runs, outdir):
    present = [r for r in runs if r["div"] is not None and len(r["div"]) and r["div_it"] is not None]
    if not present:
        print("note: replica_divergence.png skipped: no run has /divergence/replica_divergence")
        return None
    if not any(np.any(r["div"] > 0) for r in present):
        print("note: replica_divergence.png skipped: every replica stayed bit-identical (divergence 0)")
        return None
    nets = net_order(present)
    colours = net_colours(nets)
    facets = sorted({r["facet"] for r in present})
    rows, cols = grid_shape(len(facets))
    fig, axes = plt.subplots(rows, cols, figsize=(7.0 * cols, 4.6 * rows), squeeze=False, sharey=True)
    handles, labels = [], []
    for ax, facet in zip(axes.flat, facets):
        in_facet = [r for r in present if r["facet"] == facet]
        for net in nets:
            group = [r for r in in_facet if r["net"] == net]
            if not group:
                continue
            c = colours[net]
            b = band([(r["div_it"], r["div"]) for r in group])
            if b is None or not len(b[0]):
                continue
            it, med, lo, hi = b
            ax.plot(it, med, color=c, marker="o", ms=3, lw=2.2 if is_exact(net) else 1.4,
                    zorder=2.5 if is_exact(net) else 3)
            if len(group) > 1:
                ax.fill_between(it, lo, hi, color=c, alpha=0.12, lw=0, zorder=1)
            label = "%s (%s)" % (net, seeds_text(len(group)))
            if label not in labels:
                labels.append(label)
                handles.append(Line2D([], [], color=c, lw=2))
        ax.set_yscale("symlog", linthresh=1e-7)
        ax.set_xlabel("iteration (optimizer steps)")
        if facet:
            ax.set_title(facet_label(facet), fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(facets):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("replica divergence (max relative L2)")
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.93),
               title="network model (--net)", fontsize=8.5, title_fontsize=9, frameon=False)
    fig.suptitle("Replica divergence between ranks' copies of replicated parameters", fontsize=12)
    fig.tight_layout()
    return save(fig, outdir, "replica_divergence.png")


# ------------------------------------------------------------------------------------------
# 4. time to target (reliable transport vs lossy)

def is_reliable(net):
    return "transport=reliable" in net


def is_bounded(net):
    return "transport=bounded" in net


def plot_time_to_target(runs, outdir):
    usable = [r for r in runs if (r["sim_comm"] is not None or r["sim_step"] is not None)
              and r["train_loss"] is not None and len(r["train_loss"])]
    if not any(not is_exact(r["net"]) for r in usable):
        print("note: time_to_target.png skipped: no run over a lossy or partial network has a "
              "simulated time (/train/sim_step_s or /train/sim_comm_s)")
        return None
    nets = net_order(usable)
    colours = net_colours(nets)
    facets = sorted({r["facet"] for r in usable})
    rows, cols = grid_shape(len(facets))
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 4.8 * rows), squeeze=False)
    handles, labels = [], []
    target_notes = []
    for ax, facet in zip(axes.flat, facets):
        in_facet = [r for r in usable if r["facet"] == facet]
        exact_final = [r["final_train"] for r in in_facet if is_exact(r["net"])
                       and r["status"] == "completed" and r["final_train"] is not None]
        if exact_final:
            base, what = float(np.median(exact_final)), "exact"
        else:
            rel = [r["final_train"] for r in in_facet if is_reliable(r["net"])
                   and r["final_train"] is not None]
            base, what = (float(np.median(rel)), "reliable") if rel else (None, None)
        target = base * TARGET_FACTOR if base is not None and math.isfinite(base) else None
        xs_pos = []
        # The simulated step (compute + communication; pipeline runs: the timeline with its
        # bubble and the inter-stage links' time) when every run of the panel has it.
        stepped = all(r["sim_step"] is not None for r in in_facet)
        pipelined = stepped and all((r["config"].get("pipeline-model-parallel-size") or 1) > 1
                                    for r in in_facet)
        clock = "sim_step" if stepped else "sim_comm"
        for net in nets:
            group = [r for r in in_facet if r["net"] == net]
            if not group:
                continue
            c = colours[net]
            times = band([(r["train_it"], np.cumsum(clean(r[clock])[:len(r["train_loss"])]))
                          for r in group])
            losses = band([(r["train_it"], trailing_mean(r["train_loss"], FINAL_WINDOW))
                           for r in group])
            if times is None or losses is None:
                continue
            t, loss = times[1], losses[1]
            ls = "-" if is_reliable(net) or is_exact(net) else (":" if is_bounded(net) else "--")
            ax.plot(t, loss, color=c, ls=ls, lw=1.8 if is_exact(net) else 1.4,
                    zorder=4 if is_exact(net) else 3)
            xs_pos.extend(t[np.isfinite(t) & (t > 0)].tolist())
            reached = None
            if target is not None:
                hit = np.nonzero(np.isfinite(loss) & (loss <= target))[0]
                if len(hit):
                    reached = float(t[hit[0]])
                    ax.plot([reached], [loss[hit[0]]], marker="o", ms=7, color=c,
                            markeredgecolor="black", zorder=5)
            kind = "" if is_exact(net) else (" [reliable]" if is_reliable(net) else
                                              " [bounded]" if is_bounded(net) else " [lossy]")
            reach = ("reaches target at " + fmt_seconds(reached)) if reached is not None else \
                ("target not reached" if target is not None else "no target")
            label = "%s%s: %s" % (net, kind, reach)
            if facet:
                label += " (%s)" % facet_label(facet)
            labels.append(label)
            handles.append(Line2D([], [], color=c, ls=ls, lw=1.8))
        if target is not None:
            ax.axhline(target, color="dimgray", ls="-.", lw=1.0, zorder=1)
            ax.annotate("target %.3f" % target, xy=(0.0, target),
                        xycoords=("axes fraction", "data"), xytext=(4, 3),
                        textcoords="offset points", fontsize=8, color="dimgray")
            target_notes.append("target loss = %.2f × the %s runs' final train loss = %.3f%s"
                                % (TARGET_FACTOR, what, target,
                                   " (%s)" % facet_label(facet) if facet else ""))
        if xs_pos and max(xs_pos) / max(min(xs_pos), 1e-30) > 1e3:
            ax.set_xscale("log")
        ax.set_xlabel("cumulative simulated step time (s): pipeline timeline" if pipelined
                      else "cumulative simulated step time (s): compute + communication" if stepped
                      else "cumulative simulated communication time (s)")
        ax.set_ylabel("train loss (nats/token, mean of last %d iterations)" % FINAL_WINDOW)
        if facet:
            ax.set_title(facet_label(facet), fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(facets):]:
        ax.set_visible(False)
    handles += [Line2D([], [], color="none"),
                Line2D([], [], color="gray", ls="-", label="reliable transport (retransmits)"),
                Line2D([], [], color="gray", ls="--", label="lossy transport (no retransmission)"),
                Line2D([], [], color="gray", ls=":", label="bounded transport (retransmits until a deadline)"),
                Line2D([], [], color="gray", marker="o", ls="none", markeredgecolor="black",
                       label="first reaches the target loss"),
                Line2D([], [], color="dimgray", ls="-.", label="target loss")]
    labels += [""] + [h.get_label() for h in handles[-5:]]
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.93), frameon=False,
               title="network model (--net), median over seeds", fontsize=8.5, title_fontsize=9)
    fig.suptitle("Time to a target loss (simulated time)", fontsize=12)
    if target_notes:
        fig.text(0.5, -0.01, "\n".join(target_notes), ha="center", va="top", fontsize=8.5,
                 color="dimgray")
    fig.tight_layout()
    return save(fig, outdir, "time_to_target.png")


# ------------------------------------------------------------------------------------------

def main(argv):
    if len(argv) < 2 or len(argv) > 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr if len(argv) < 2 else sys.stdout)
        sys.exit(0 if len(argv) >= 2 else 2)
    d = argv[1]
    outdir = argv[2] if len(argv) == 3 else os.path.join(d, "plots")
    runs = load_dir(d)
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        fail("cannot create output folder '%s': %s" % (outdir, e.strerror))
    if not os.path.isdir(outdir):
        fail("output '%s' is not a directory" % outdir)
    plt.rcParams.update({"font.size": 9.5})
    plot_loss_curves(runs, outdir)
    plot_gap(runs, outdir)
    plot_accuracy(runs, outdir)
    plot_divergence(runs, outdir)
    plot_time_to_target(runs, outdir)


if __name__ == "__main__":
    main(sys.argv)
