"""Reassembly-Bench's report: ``bench.md`` (scoring, comparisons, the dataset's documentation), its figures and the
headline metrics of its MLflow run. Everything here is computed from ``dery.stages.bench.summarise``'s document."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import bench as BN
from .. import fingerprint as FP
from .claims_summary import _jsonable as jsonable  # noqa: F401 - the same JSON cleaning as the claims report

GOAL_TAU, GOAL_SECONDS = 0.6, 2.0  # the issue's bar for a default proxy: held-out tau >= 0.6 at <= 2 s per candidate
COLUMNS = [
    ("kind", "`assembly`, `scratch` (the same architecture from random init, FT) or `zoo` (a zoo model fine-tuned FT)"),
    ("budget", "the budget whose feasible set the assembly comes from (empty for zoo models)"),
    ("id", "candidate id of the budget's `results/reassembly/{budget}/candidates.json` (zoo: model id)"),
    ("slot", "position in the budget's bench sample (`results/bench/{budget}/sample.json`, the ILP's order)"),
    ("blocks", "model[first-last block] > ...: the blocks, in order"),
    ("protocol", "FT (all weights trained) or FZ (pretrained blocks frozen; stem, adapters, head trained)"),
    ("stitching", "adapters: lstsq (least-squares init, the pipeline's), random (PyTorch init) or trained "
                  "(lstsq, then trained alone to the next block's native input)"),
    ("params_M, MACs_M", "parameters and multiply-accumulates (stem, adapters and head included) in millions"),
    ("proxy_*", "every proxy's score of the assembly before any fine-tuning (higher = predicted better)"),
    ("val_acc_seedS, test_acc_seedS", "best validation accuracy and the test accuracy of that epoch's weights, "
                                      "fine-tuning seed S (fractions)"),
    ("test_acc_mean", "mean test accuracy over the seeds"),
]


def _f(x: float | None, nd: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def _pct(ms: tuple | list | None) -> str:
    if not ms or ms[2] == 0:
        return "n/a"
    m, s, n = ms
    return f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s is not None and math.isfinite(s) else "") + f" (n={n})"


def _diff(ci: dict | None) -> str:
    if not ci:
        return "n/a"
    lo, hi = ci.get("lo", float("nan")), ci.get("hi", float("nan"))
    band = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{100 * ci['diff']:+.1f}{band}"


def _scoring(sc: dict, label_aware: set[str]) -> list[str]:
    out = [f"### Protocol {sc['protocol']} (assemblies per budget: {sc['assemblies']})", "",
           "| proxy | labels | Kendall τ [95% CI] | Spearman ρ [95% CI] | s / candidate | τ > 0 |",
           "|---|---|---|---|---|---|"]
    for name, r in sorted(sc["proxies"].items(), key=lambda t: -(t[1]["tau"] if math.isfinite(t[1]["tau"]) else -9)):
        out.append(f"| {name} | {'yes' if name in label_aware else 'no'} | {_f(r['tau'], 2)} [{_f(r['tau_lo'], 2)}, "
                   f"{_f(r['tau_hi'], 2)}] | {_f(r['rho'], 2)} [{_f(r['rho_lo'], 2)}, {_f(r['rho_hi'], 2)}] | "
                   f"{_f(r['seconds'], 2)} | {BN.C.verdict(r['tau_lo'], r['tau_hi'])} |")
    sel = sc["selection"]
    out.append("")
    if sel is None:
        out.append("Selection: n/a (each half needs a budget with 3 assemblies).")
    else:
        held = sel["heldout_tau"]
        out.append(f"Selection on validation accuracy: `{sel['selected']}` has the best τ on the selection halves "
                   f"({_f(sel['selection_tau'][sel['selected']], 2)}); on the held-out halves the best is "
                   f"`{sel['heldout_best']}` (τ {_f(held[sel['heldout_best']], 2)}; `{sel['selected']}`: "
                   f"{_f(held[sel['selected']], 2)}). Recommended default: **`{sel['recommended']}`**"
                   + ("" if sel["wins_heldout"] else " (no proxy was confirmed on held-out assemblies: the current "
                                                      "default stays)") + ".")
    return out + [""]


def _goal(doc: dict) -> str:
    sc = doc["scoring"].get("FT") or next(iter(doc["scoring"].values()))
    sel = sc["selection"]
    if sel is None:
        return "Goal (held-out τ ≥ 0.6 at ≤ 2 s per candidate): not measurable (too few assemblies)."
    met = [n for n, t in sel["heldout_tau"].items() if t is not None and math.isfinite(t) and t >= GOAL_TAU
           and doc["seconds_per_candidate"].get(n, math.inf) <= GOAL_SECONDS]
    return ("Goal (held-out τ ≥ 0.6 at ≤ 2 s per candidate, protocol " + sc["protocol"] + "): "
            + (f"met by {', '.join(f'`{m}`' for m in sorted(met))}." if met else "**not met by any proxy**."))


def markdown(doc: dict, n_rows: int) -> str:
    from .. import proxy as PX

    cfg, b = doc["cfg"], doc["cfg"]["bench"]
    fp = doc["fingerprint"]
    lines = [f"# Reassembly-Bench: experiment `{cfg['name']}`", "",
             f"Every benchmarked assembly fine-tuned for {b['epochs']} epoch(s) with seeds "
             f"{', '.join(str(cfg['seed'] + i) for i in range(b['seeds']))}, protocols {', '.join(b['protocols'])}; "
             "the zoo models and each proxy's pick trained the same way (FT) as baselines. Sample per budget: "
             + "; ".join(f"{k}: {v['sampled']} of {v['of']} feasible" for k, v in sorted(doc["sampled"].items()))
             + f". Run fingerprint `{FP.short(fp)}` (`results/fingerprint.json`). Accuracies are test top-1 in %; "
             "differences in points with 95% intervals (Welch; paired t for the stitching comparison).", "",
             "## Proxies against fine-tuned accuracy", "",
             "τ/ρ: within each budget against the seed-mean test accuracy, averaged weighted by assemblies; percentile "
             "bootstrap intervals (assemblies resampled within budgets). `params` and `macs` are the naive baselines "
             "every proxy must beat. Seconds per candidate on the machine of the fingerprint.", ""]
    label_aware = set(PX.ALL_LABEL_AWARE) | {"low_fidelity"}
    for sc in doc["scoring"].values():
        lines += _scoring(sc, label_aware)
    lines += [_goal(doc), "", f"## The pick (proxy `{doc['default']}`) against the alternatives, FT", "",
              "| budget | pick | pick top-1 | vs scratch (same blocks) | vs random feasible assembly | "
              "vs zoo models that fit |", "|---|---|---|---|---|---|"]
    for bud, c in doc["comparison"].items():
        if not c.get("pick"):
            lines.append(f"| {bud} | n/a | | | | |")
            continue
        zoo = "; ".join(f"{m}: {_diff(z['diff'])} {z['verdict']}" for m, z in c["zoo"].items()) or "none fits"
        sc = c["scratch"]
        rf = c["random_feasible"]
        lines.append(f"| {bud} | {c['blocks']} | {_pct(c['acc'])} | "
                     + (f"{_diff(sc['diff'])} {sc['verdict']}" if sc else "n/a")
                     + f" | {_diff(rf['diff'])} {rf['verdict']} ({rf['networks']} assemblies) | {zoo} |")
    lines += ["", "## Stitching: adapters trained, least-squares, random", "",
              "The same assemblies (spread over each budget's sample), FT, per adapter variant; the difference is "
              "paired per assembly (its seed mean) against least-squares adapters.", "",
              "| budget | adapters | top-1 | vs lstsq | verdict |", "|---|---|---|---|---|"]
    for bud, vs in doc["stitching"].items():
        for v, r in vs.items():
            lines.append(f"| {bud} | {v} | {_pct(r['acc'])} | {_diff(r['vs_base'])} | {r['verdict']} |")
    lines += ["", "## Figures", "", "![proxy vs accuracy](bench/figures/proxy_vs_accuracy.png)",
              "![accuracy vs params](bench/figures/accuracy_vs_params.png)",
              "![stitching](bench/figures/stitching.png)", "",
              "## The dataset: `results/bench.csv`", "",
              f"{n_rows} rows: one per assembly × protocol × adapter variant, and one per baseline. Score a new proxy "
              "against it without training anything: compute it for the `blocks` of each row (rebuild the network "
              "with `dery.stitching.build` from the row's `id` in `results/bench/{budget}/sample.json`) and rank-"
              "correlate it with `test_acc_mean` within each budget. Columns:", ""]
    lines += [f"- `{k}`: {v}" for k, v in COLUMNS]
    return "\n".join(lines) + "\n"


def headline(doc: dict) -> dict[str, float]:
    """One number per proxy and protocol (τ), the pick's comparisons and the stitching differences."""
    out: dict[str, float] = {}
    for p, sc in doc["scoring"].items():
        for n, r in sc["proxies"].items():
            out[f"tau.{p}.{n}"] = r["tau"]
        if sc["selection"]:
            out.update({f"heldout_tau.{p}.{n}": v for n, v in sc["selection"]["heldout_tau"].items()})
    for n, s in doc["seconds_per_candidate"].items():
        out[f"seconds_per_candidate.{n}"] = s
    for b, c in doc["comparison"].items():
        if c.get("pick"):
            out[f"pick_acc.{b}"] = c["acc"][0]
            if c["scratch"] and c["scratch"]["diff"]:
                out[f"pick_minus_scratch.{b}"] = c["scratch"]["diff"]["diff"]
            out[f"pick_minus_random.{b}"] = (c["random_feasible"]["diff"] or {}).get("diff", float("nan"))
    for b, vs in doc["stitching"].items():
        for v, r in vs.items():
            if r["vs_base"]:
                out[f"stitching_minus_lstsq.{b}.{v}"] = r["vs_base"]["diff"]
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def figures(rows: list[dict[str, Any]], names: list[str], pick: dict[str, str | None], fig_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    asm = [r for r in rows if r["kind"] == "assembly" and r["protocol"] == "FT" and r["stitching"] == "lstsq"]
    budgets = sorted({r["budget"] for r in asm})
    cols = 4
    nrow = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(nrow, cols, figsize=(3.2 * cols, 2.8 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for b in budgets:
            pts = [(r["scores"].get(name), BN._mean(r["test_acc"])) for r in asm if r["budget"] == b]
            pts = [(x, 100 * y) for x, y in pts if x is not None and math.isfinite(x) and math.isfinite(y)]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=12, label=b)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("FT test top-1 (%)")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(fig_dir) / "proxy_vs_accuracy.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for b in budgets:
        pts = [(r["params"] / 1e6, 100 * BN._mean(r["test_acc"]), r["id"]) for r in asm if r["budget"] == b]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, label=f"{b} assemblies")
        mine = [p for p in pts if p[2] == pick.get(b)]
        if mine:
            ax.scatter([mine[0][0]], [mine[0][1]], s=120, marker="*", edgecolor="k", label=f"{b} pick")
    zoo = [r for r in rows if r["kind"] == "zoo"]
    ax.scatter([r["params"] / 1e6 for r in zoo], [100 * BN._mean(r["test_acc"]) for r in zoo], marker="s", s=20,
               c="grey", label="zoo models (FT)")
    ax.set_xlabel("params (M)")
    ax.set_ylabel("FT test top-1 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(fig_dir) / "accuracy_vs_params.png", dpi=110)
    plt.close(fig)

    variants = sorted({r["stitching"] for r in rows if r["kind"] == "assembly" and r["protocol"] == "FT"})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(len(variants), 1)
    compared = {b: {i for v in variants if v != "lstsq" for i in BN.assemblies_by_budget(rows, "FT", v).get(b, {})}
                for b in budgets}  # the assemblies every variant was run on: the bars compare like with like
    for j, v in enumerate(variants):
        ys = []
        for b in budgets:
            comp = BN.assemblies_by_budget(rows, "FT", v).get(b, {})
            ys.append(100 * BN._mean([a["test_acc"] for i, a in comp.items() if i in compared[b]]))
        ax.bar([i + j * width for i in range(len(budgets))], ys, width, label=v)
    ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(budgets))], budgets)
    ax.set_ylabel("FT test top-1 (%), compared assemblies")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(fig_dir) / "stitching.png", dpi=110)
    plt.close(fig)
