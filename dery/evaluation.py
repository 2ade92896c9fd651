"""The result tables, built from MLflow runs: one row per fine-tuned network, the proxy's rank
correlation, the equivalence sets; rendered as the paper's per-budget tables (Markdown) and CSV.

Everything here takes the DataFrame of ``tracking.runs`` (latest run per key), so the tables are
the same whether the store is the local SQLite file or an ``mlflow server``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

KIND_ORDER = {"assembly": 0, "scratch": 1, "zoo": 2}
UNITS_NOTE = ("MACs count one multiply-accumulate as 1 (what DeRy and mmcv report as \"FLOPs\"; measured as "
              "torch.utils.flop_counter FLOPs / 2 at 32x32 input); FLOPs = 2 x MACs.")


def kendall_tau(x: list[float], y: list[float]) -> float:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df else pd.Series([np.nan] * len(df), index=df.index, dtype=object)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows: every assembly (FZ and FT accuracy side by side), zoo model and from-scratch network."""
    if "tags.stage" not in df:
        return pd.DataFrame()
    ft = df[df["tags.stage"] == "finetune"].copy()
    if ft.empty:
        return pd.DataFrame()
    col = lambda name: _column(ft, name)  # noqa: E731
    ft = ft.assign(kind=col("tags.kind"), budget=col("tags.budget"), name=col("tags.name"),
                   protocol=col("tags.protocol"), blocks=col("tags.blocks"),
                   params_M=col("metrics.params") / 1e6, MACs_M=col("metrics.macs") / 1e6,
                   proxy=col("metrics.proxy_score"), trainable_M=col("metrics.trainable_params") / 1e6,
                   test_acc=col("metrics.test_acc"), val_acc=col("metrics.val_acc"))
    wide = ft.pivot_table(index=["kind", "budget", "name"], columns="protocol", values=["test_acc", "val_acc"],
                          aggfunc="first")
    wide.columns = [f"{p}_{v}" for v, p in wide.columns]
    for proto in ("FZ", "FT"):  # a column per protocol even when no run used it (the CSV keeps its shape)
        for v in ("test_acc", "val_acc"):
            if f"{proto}_{v}" not in wide:
                wide[f"{proto}_{v}"] = np.nan
    meta = ft.groupby(["kind", "budget", "name"]).agg(blocks=("blocks", "first"), params_M=("params_M", "first"),
                                                      MACs_M=("MACs_M", "first"), proxy=("proxy", "first"))
    table = meta.join(wide).reset_index()
    table["FLOPs_M"] = 2 * table["MACs_M"]
    table["_k"] = table["kind"].map(KIND_ORDER)
    table = table.sort_values(["budget", "_k", "proxy", "params_M"], ascending=[True, True, False, True])
    cols = ["kind", "budget", "name", "blocks", "params_M", "MACs_M", "FLOPs_M", "proxy",
            "FZ_test_acc", "FT_test_acc", "FZ_val_acc", "FT_val_acc"]
    return table[cols].reset_index(drop=True)


def budget_limits(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Each budget's limits (M params, M MACs), from the params of its reassembly run."""
    if "tags.stage" not in df:
        return {}
    out = {}
    for _, run in df[df["tags.stage"] == "reassembly"].iterrows():
        out[str(run["tags.budget"])] = {"params_m": float(run.get("params.budget.params_m", np.nan)),
                                        "macs_m": float(run.get("params.budget.macs_m", np.nan))}
    return dict(sorted(out.items()))


def equivalence_sets(df: pd.DataFrame) -> tuple[list[str], float]:
    """The chosen sets (one line per set: its blocks) and the stage alignment, from the partition run."""
    part = df[df["tags.stage"] == "partition"] if "tags.stage" in df else df.iloc[:0]
    if part.empty:
        return [], float("nan")
    run = part.iloc[0]
    prefix = "tags.set"
    ids = sorted(int(c[len(prefix):]) for c in part.columns
                 if c.startswith(prefix) and c[len(prefix):].isdigit() and isinstance(run[c], str))
    return [run[f"{prefix}{j}"] for j in ids], float(run.get("metrics.stage_alignment", np.nan))


def _budget_tau(asm: pd.DataFrame) -> dict[str, float]:
    """Kendall tau between the proxy score and test accuracy of one budget's fine-tuned assemblies."""
    out = {}
    for proto in ("FZ", "FT"):
        col = f"{proto}_test_acc"
        if col in asm:
            sub = asm.dropna(subset=[col, "proxy"])
            out[f"kendall_tau_{proto}"] = kendall_tau(sub["proxy"].tolist(), sub[col].tolist())
            out[f"n_{proto}"] = len(sub)
    return out


def proxy_correlation(table: pd.DataFrame) -> dict[str, float]:
    """Kendall tau within each budget (the proxy ranks one budget's candidates), averaged weighted by the number
    of assemblies over the budgets where it is defined. Pooling budgets into one ranking would mix two lists."""
    if table.empty:
        return {}
    per = proxy_correlation_by_budget(table)
    out = {}
    for proto in ("FZ", "FT"):
        got = [(c[f"kendall_tau_{proto}"], c[f"n_{proto}"]) for c in per.values() if f"kendall_tau_{proto}" in c]
        ok = [(t, n) for t, n in got if not math.isnan(t)]
        if got:
            out[f"kendall_tau_{proto}"] = float(np.average([t for t, _ in ok], weights=[n for _, n in ok])) if ok \
                else float("nan")
            out[f"n_{proto}"] = int(sum(n for _, n in got))
    return out


def proxy_correlation_by_budget(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    if table.empty:
        return {}
    return {str(b): _budget_tau(g) for b, g in table[table["kind"] == "assembly"].groupby("budget")}


def best_accuracy(table: pd.DataFrame) -> dict[str, float]:
    """Best assembly test accuracy (FZ or FT) per budget."""
    if table.empty:
        return {}
    asm = table[table["kind"] == "assembly"]
    return {str(b): float(g[["FZ_test_acc", "FT_test_acc"]].max(axis=None)) for b, g in asm.groupby("budget")}


def _fits(row: pd.Series, limits: dict[str, float]) -> str:
    ok = row["params_M"] <= limits.get("params_m", np.inf) and row["MACs_M"] <= limits.get("macs_m", np.inf)
    return "yes" if ok else "no"


def paper_table(table: pd.DataFrame, budget: str, limits: dict[str, float] | None = None) -> pd.DataFrame:
    """One budget as in the paper: its assemblies (by proxy rank), the from-scratch network, every zoo model."""
    rows = table[(table["budget"] == budget) | (table["kind"] == "zoo")].copy()
    limits = limits or {}
    pct = lambda s: s * 100  # noqa: E731
    return pd.DataFrame({
        "network": rows["name"], "kind": rows["kind"], "blocks": rows["blocks"],
        "params (M)": rows["params_M"], "MACs (M)": rows["MACs_M"], "FLOPs (M)": rows["FLOPs_M"],
        "NASWOT": rows["proxy"], "FZ top-1 (%)": pct(rows["FZ_test_acc"]), "FT top-1 (%)": pct(rows["FT_test_acc"]),
        "fits budget": [_fits(r, limits) for _, r in rows.iterrows()],
    }).reset_index(drop=True)


FORMATS = {"params (M)": "{:.3g}", "MACs (M)": "{:.3g}", "FLOPs (M)": "{:.3g}", "NASWOT": "{:.1f}",
           "FZ top-1 (%)": "{:.1f}", "FT top-1 (%)": "{:.1f}"}


def to_markdown(table: pd.DataFrame, float_fmt: str = "{:.3f}", formats: dict[str, str] | None = None) -> str:
    formats = formats or {}
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, (float, np.floating)):
                cells.append("" if math.isnan(v) else formats.get(c, float_fmt).format(v))
            else:
                cells.append("" if v is None else str(v).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tau_text(corr: dict[str, float]) -> str:
    parts = []
    for proto in ("FZ", "FT"):
        if f"kendall_tau_{proto}" in corr:
            tau = corr[f"kendall_tau_{proto}"]
            n = corr[f"n_{proto}"]
            parts.append(f"{proto} " + ("n/a (needs >= 3 distinct assemblies in a budget)" if math.isnan(tau)
                                        else f"{tau:+.3f}")
                         + f" (n={n})")
    return "; ".join(parts) if parts else "no fine-tuned assemblies"


def fingerprint_markdown(df: pd.DataFrame) -> str:
    """The run's fingerprint as MLflow holds it (tags of every run, written by `track`); '' before any."""
    from .fingerprint import STAGES

    col = "tags.dery.fingerprint"
    if df.empty or col not in df or df[col].dropna().empty:
        return ""
    latest = df[df[col].notna()].iloc[0]  # runs() lists the newest first
    tag = lambda k: latest.get(f"tags.dery.{k}")  # noqa: E731
    rows = [f"| {s} | `{tag('fingerprint.' + s)}` |" for s in STAGES if isinstance(tag("fingerprint." + s), str)]
    many = df[col].dropna().nunique()
    return "\n".join([
        "## Fingerprint", "",
        f"Run fingerprint **`{latest[col]}`** (`results/fingerprint.json`; compare two runs with `dery fingerprint "
        f"A.json B.json`). Made on: {tag('cpu')} (AVX-512: {'yes' if tag('cpu_avx512') == 'True' else 'no'}) with "
        f"{tag('kernels')} kernels, reproducibility mode `{tag('repro_mode')}`; {tag('versions')}."
        + (f" The latest runs carry {many} different fingerprints: some rows come from an earlier run." if many > 1
           else ""), "", "| stage | hash |", "|---|---|", *rows, ""])


def results_markdown(df: pd.DataFrame, experiment: str, tracking_uri: str) -> str:
    """The paper-style report of one experiment: per budget, every fine-tuned assembly and baseline;
    the proxy's Kendall tau; the equivalence sets."""
    table = summary_table(df)
    if table.empty:
        return f"# dery results: experiment `{experiment}`\n\nNo fine-tuning runs in {tracking_uri} yet.\n"
    limits = budget_limits(df)
    by_budget = proxy_correlation_by_budget(table)
    sets, alignment = equivalence_sets(df)
    md = [f"# dery results: experiment `{experiment}`", "",
          f"Read back from MLflow ({tracking_uri}), latest run per key. Top-1 accuracy on the Fashion-MNIST test set "
          "(touched once per network). Params include stem, adapters and head. " + UNITS_NOTE + " NASWOT = the "
          "training-free proxy score that ranked the assemblies (higher first). FZ = pretrained blocks frozen, "
          "FT = all weights trained; `scratch` = the best-ranked assembly's architecture from random initialisation; "
          "`zoo` = each zoo model fine-tuned from its pretraining (FT); \"fits budget\" compares params and MACs with "
          "the budget's limits.", ""]
    for budget in sorted(b for b in table["budget"].unique() if b != "zoo"):
        lim = limits.get(budget, {})
        head = f"## Budget `{budget}`"
        if lim:
            head += f": params <= {lim['params_m']:g} M, MACs <= {lim['macs_m']:g} M"
        md += [head, "", to_markdown(paper_table(table, budget, lim), formats=FORMATS), "",
               f"Kendall tau (NASWOT vs top-1, fine-tuned assemblies): {_tau_text(by_budget.get(budget, {}))}", ""]
    md += ["## Proxy rank correlation (Kendall tau within each budget, averaged weighted by assemblies)", "",
           _tau_text(proxy_correlation(table)), "",
           "## Equivalence sets" + ("" if math.isnan(alignment) else f" (stage alignment {alignment:.2f})"), ""]
    md += [f"- set {j}: {s}" for j, s in enumerate(sets)] or ["(no partition run in this experiment)"]
    fp = fingerprint_markdown(df)
    return "\n".join(md) + "\n" + ("\n" + fp if fp else "")


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def metrics_summary(df: pd.DataFrame) -> dict[str, Any]:
    """The few numbers `dvc metrics diff` compares between commits (NaN written as null: strict JSON)."""
    table = summary_table(df)
    _, alignment = equivalence_sets(df)
    return {"proxy": {k: _finite(v) for k, v in proxy_correlation(table).items()},
            "stage_alignment": _finite(alignment), "best": best_accuracy(table)}


def mean_per_class_accuracy(pred: Any, target: Any, num_classes: int | None = None) -> float:
    """The mean over classes of each class's accuracy (the paper's metric for Aircraft, Caltech-101,
    Flowers and Pets; ``dery.datasets.METRIC``). Classes absent from ``target`` are left out."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    if pred.shape != target.shape or not len(target):
        raise ValueError(f"pred and target need the same, non-zero length ({pred.shape} vs {target.shape}).")
    n = int(num_classes or (max(pred.max(), target.max()) + 1))
    total = np.bincount(target, minlength=n)
    hit = np.bincount(target[pred == target], minlength=n)
    seen = total > 0
    return float((hit[seen] / total[seen]).mean())
