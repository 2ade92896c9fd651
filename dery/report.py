"""Figures for ``snakemake --report``: where people would rather look than read.

One function per figure, each writing one PNG from the files the stages already wrote (CKA
matrices, the partition, the summary table read back from MLflow, the per-epoch curves in the
``*.metrics.json`` records). Matplotlib's Agg backend: no display needed.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, NullFormatter  # noqa: E402

from . import evaluation as E  # noqa: E402

DPI = 110
KIND_STYLE = {"assembly": {"color": "tab:blue", "marker": "o"}, "scratch": {"color": "tab:red", "marker": "s"},
              "zoo": {"color": "tab:green", "marker": "^"}}


def _json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def set_colour(j: int) -> tuple:
    return plt.get_cmap("tab10")(j % 10)


def _save(fig, out: str | os.PathLike) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out) + ".tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out)  # atomic: a half-written figure is never taken as finished


def model_blocks(partition: dict, model: str) -> list[dict]:
    return sorted((b for b in partition["blocks"] if b["model"] == model), key=lambda b: b["start"])


# --- CKA ---------------------------------------------------------------------------------------

def _block_strip(ax, blocks: list[dict], axis: str) -> None:
    """Boundaries of the model's blocks on one axis of the heatmap, and a strip coloured by set."""
    for b in blocks:
        lo, hi = b["start"] - 0.5, b["end"] + 0.5
        if axis == "y":
            ax.axhline(hi, color="white", lw=1.2)
            ax.add_patch(Rectangle((-1.6, lo), 1.0, hi - lo, color=set_colour(b["set"]), clip_on=False))
        else:
            ax.axvline(hi, color="white", lw=1.2)
            ax.add_patch(Rectangle((lo, -1.6), hi - lo, 1.0, color=set_colour(b["set"]), clip_on=False))


def cka_heatmap(cka: np.ndarray, rows: list[str], cols: list[str], a: str, b: str, partition: dict | None,
                out: str | os.PathLike) -> None:
    """Linear CKA between every node of model a (rows) and of model b (columns), stem included; white
    lines cut each model into its K blocks, the coloured strips give each block's equivalence set."""
    h = max(3.0, 0.28 * len(rows) + 1.5)
    w = max(3.5, 0.28 * len(cols) + 2.5)
    fig, ax = plt.subplots(figsize=(min(w, 14), min(h, 14)))
    im = ax.imshow(cka, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="upper")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_xlabel(f"{b} nodes")
    ax.set_ylabel(f"{a} nodes")
    if partition is not None:
        _block_strip(ax, model_blocks(partition, a), "y")
        _block_strip(ax, model_blocks(partition, b), "x")
        ax.set_xlim(-1.6, len(cols) - 0.5)
        ax.set_ylim(len(rows) - 0.5, -1.6)
    fig.colorbar(im, ax=ax, label="linear CKA", shrink=0.8)
    ax.set_title(f"CKA: {a} vs {b}", fontsize=9)
    _save(fig, out)


def cka_heatmap_file(npz: str, partition_json: str, a: str, b: str, out: str) -> None:
    with np.load(npz) as z:
        cka, rows, cols = z["cka"], [str(r) for r in z["rows"]], [str(c) for c in z["cols"]]
    cka_heatmap(cka, rows, cols, a, b, _json(partition_json), out)


# --- partition ---------------------------------------------------------------------------------

def partition_figure(partition: dict, node_names: dict[str, list[str]], out: str | os.PathLike) -> None:
    """Each model as a bar of its nodes (stem excluded), cut into its K blocks, each coloured by its set."""
    models = sorted(node_names)
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(models) + 1.4))
    for y, m in enumerate(models):
        n = len(node_names[m]) - 1
        for b in model_blocks(partition, m):
            lo, hi = (b["start"] - 1) / n, b["end"] / n  # node i (1..n) spans [(i-1)/n, i/n] of the model's depth
            ax.add_patch(Rectangle((lo, y - 0.35), hi - lo, 0.7, facecolor=set_colour(b["set"]), edgecolor="black"))
            label = f"S{b['set']}\n{node_names[m][b['start']]}..{node_names[m][b['end']]}"
            ax.text((lo + hi) / 2, y, label, ha="center", va="center", fontsize=6)
        # one tick per node boundary: how many nodes each block holds
        ax.vlines([i / n for i in range(1, n)], y + 0.25, y + 0.35, color="black", lw=0.6)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    ax.set_ylim(len(models) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("relative depth (fraction of the model's nodes)")
    k = len(partition["sets"])
    ax.legend(handles=[Patch(color=set_colour(j), label=f"set {j}") for j in range(k)], ncol=k, fontsize=7,
              loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_title(f"Partition: K={k} blocks per model, stage alignment "
                 f"{partition.get('stage_alignment', float('nan')):.2f}", fontsize=9)
    _save(fig, out)


def partition_figure_file(partition_json: str, feature_jsons: list[str], out: str) -> None:
    names = {(m := _json(f))["model"]: m["names"] for f in feature_jsons}
    partition_figure(_json(partition_json), names, out)


# --- proxy vs accuracy -------------------------------------------------------------------------

def proxy_scatter(table: pd.DataFrame, out: str | os.PathLike) -> None:
    """NASWOT score against test top-1 of the fine-tuned assemblies, one panel per protocol, tau per budget."""
    asm = table[table["kind"] == "assembly"] if not table.empty else table
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    budgets = sorted(asm["budget"].unique()) if not asm.empty else []
    for ax, proto in zip(axes, ("FZ", "FT"), strict=True):
        col = f"{proto}_test_acc"
        taus = []
        for i, budget in enumerate(budgets):
            g = asm[asm["budget"] == budget].dropna(subset=[col, "proxy"])
            ax.scatter(g["proxy"], 100 * g[col], color=set_colour(i), label=budget, s=30)
            for _, r in g.iterrows():
                ax.annotate(str(r["name"]).split(":")[0], (r["proxy"], 100 * r[col]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            tau = E.kendall_tau(g["proxy"].tolist(), g[col].tolist())
            taus.append(f"{budget}: " + ("n/a" if math.isnan(tau) else f"{tau:+.2f}") + f" (n={len(g)})")
        all_ = asm.dropna(subset=[col, "proxy"]) if not asm.empty else asm
        tau_all = E.kendall_tau(all_["proxy"].tolist(), all_[col].tolist()) if not asm.empty else float("nan")
        ax.set_title(f"{proto}: Kendall tau " + ("n/a (n<3)" if math.isnan(tau_all) else f"{tau_all:+.2f}")
                     + "\n" + "; ".join(taus), fontsize=8)
        ax.set_xlabel("NASWOT proxy score")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test top-1 (%)")
    if budgets:
        axes[1].legend(title="budget", fontsize=7)
    _save(fig, out)


# --- accuracy vs params ------------------------------------------------------------------------

def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks covering [lo, hi]: readable plain numbers on a log axis."""
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    inside = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5]
    return inside or [lo, hi]


def pareto_front(params: list[float], acc: list[float]) -> list[int]:
    """Indices of the points no other point beats (fewer or equal params and higher or equal accuracy,
    one strictly), ordered by params."""
    order = sorted(range(len(params)), key=lambda i: (params[i], -acc[i]))
    front, best = [], -math.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return front


def accuracy_vs_params(table: pd.DataFrame, out: str | os.PathLike) -> None:
    """Test top-1 against params for assemblies (FZ hollow, FT filled), from-scratch networks and zoo models,
    with the Pareto front over all of them."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    pts: list[tuple[float, float, str]] = []
    for kind, style in KIND_STYLE.items():
        sub = table[table["kind"] == kind] if not table.empty else table
        for proto, fill in (("FT", True), ("FZ", False)):
            col = f"{proto}_test_acc"
            if sub.empty or col not in sub:
                continue
            g = sub.dropna(subset=[col])
            if g.empty:
                continue
            ax.scatter(g["params_M"], 100 * g[col], s=40, marker=style["marker"], label=f"{kind} {proto}",
                       facecolors=style["color"] if fill else "none", edgecolors=style["color"])
            pts += [(p, 100 * a, f"{n} {proto}") for p, a, n in zip(g["params_M"], g[col], g["name"], strict=True)]
    if pts:
        front = pareto_front([p[0] for p in pts], [p[1] for p in pts])
        # the front as a staircase, carried on to the largest network so that a one-point front still shows
        fx = [pts[i][0] for i in front] + [max(p[0] for p in pts)]
        fy = [pts[i][1] for i in front] + [pts[front[-1]][1]]
        ax.step(fx, fy, where="post", color="black", lw=1, ls="--", label="Pareto front")
        for i in front:
            ax.annotate(pts[i][2], (pts[i][0], pts[i][1]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(_log_ticks(min(p[0] for p in pts), max(p[0] for p in pts)))
    ax.set_xlabel("params (M, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Accuracy vs size: assemblies vs zoo vs from scratch", fontsize=9)
    _save(fig, out)


def table_figures(summary_csv: str, out_proxy: str, out_pareto: str) -> None:
    table = pd.read_csv(summary_csv) if Path(summary_csv).stat().st_size > 1 else pd.DataFrame()
    proxy_scatter(table, out_proxy)
    accuracy_vs_params(table, out_pareto)


# --- training curves ---------------------------------------------------------------------------

def _curve_kind(rec: dict) -> str:
    return "pretrain" if rec["tags"].get("stage") == "pretrain" else rec["tags"].get("kind", "assembly")


def training_curves(records: list[dict], out: str | os.PathLike) -> None:
    """Validation accuracy and training loss per epoch: fine-tuning (assemblies, scratch, zoo) and pretraining."""
    recs = [r for r in records if not r.get("skip") and r.get("steps", {}).get("epoch_val_acc")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), layout="constrained")
    panels = {("finetune", "epoch_val_acc"): axes[0, 0], ("finetune", "epoch_train_loss"): axes[1, 0],
              ("pretrain", "epoch_val_acc"): axes[0, 1], ("pretrain", "epoch_train_loss"): axes[1, 1]}
    colours = {"assembly": plt.get_cmap("Blues"), "scratch": plt.get_cmap("Reds"), "zoo": plt.get_cmap("Greens"),
               "pretrain": plt.get_cmap("Purples")}
    by_kind: dict[str, list[dict]] = {}
    for r in sorted(recs, key=lambda r: r["key"]):
        by_kind.setdefault(_curve_kind(r), []).append(r)
    for kind, group in by_kind.items():
        for i, r in enumerate(group):
            colour = colours.get(kind, plt.get_cmap("Greys"))(0.45 + 0.5 * i / max(1, len(group)))
            stage = "pretrain" if kind == "pretrain" else "finetune"
            label = r["key"].split("/", 1)[1]
            for metric in ("epoch_val_acc", "epoch_train_loss"):
                ys = r["steps"].get(metric, [])
                scale = 100 if metric == "epoch_val_acc" else 1
                panels[(stage, metric)].plot(range(1, len(ys) + 1), [scale * y for y in ys], marker="o", ms=3,
                                             color=colour, label=label if metric == "epoch_val_acc" else None)
    for (stage, metric), ax in panels.items():
        ax.set_title(f"{stage}: {'validation top-1 (%)' if metric == 'epoch_val_acc' else 'training loss'}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        epochs = max((len(line.get_xdata()) for line in ax.get_lines()), default=1)
        ax.set_xticks(range(1, epochs + 1) if epochs <= 20 else range(1, epochs + 1, math.ceil(epochs / 10)))
        if metric == "epoch_val_acc" and ax.has_data():
            ax.legend(fontsize=6, ncol=2)
    _save(fig, out)


def training_curves_files(metric_files: list[str], out: str) -> None:
    training_curves([_json(f) for f in metric_files], out)
