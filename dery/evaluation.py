"""The summary: one row per fine-tuned network, read back from MLflow, and the proxy's rank correlation."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def kendall_tau(x: list[float], y: list[float]) -> float:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows: every assembly (FZ and FT accuracy side by side), zoo model and from-scratch network."""
    ft = df[df["tags.stage"] == "finetune"].copy()
    if ft.empty:
        return pd.DataFrame()
    col = lambda name: ft[name] if name in ft else pd.Series([np.nan] * len(ft), index=ft.index)  # noqa: E731
    ft = ft.assign(kind=col("tags.kind"), budget=col("tags.budget"), name=col("tags.name"),
                   protocol=col("tags.protocol"), blocks=col("tags.blocks"),
                   params_M=col("metrics.params") / 1e6, MACs_M=col("metrics.macs") / 1e6,
                   proxy=col("metrics.proxy_score"), trainable_M=col("metrics.trainable_params") / 1e6,
                   test_acc=col("metrics.test_acc"), val_acc=col("metrics.val_acc"))
    wide = ft.pivot_table(index=["kind", "budget", "name"], columns="protocol", values=["test_acc", "val_acc"],
                          aggfunc="first")
    wide.columns = [f"{p}_{v}" for v, p in wide.columns]
    meta = ft.groupby(["kind", "budget", "name"]).agg(blocks=("blocks", "first"), params_M=("params_M", "first"),
                                                      MACs_M=("MACs_M", "first"), proxy=("proxy", "first"))
    table = meta.join(wide).reset_index()
    order = {"assembly": 0, "scratch": 1, "zoo": 2}
    table["_k"] = table["kind"].map(order)
    table = table.sort_values(["budget", "_k", "proxy", "params_M"], ascending=[True, True, False, True])
    return table.drop(columns="_k").reset_index(drop=True)


def proxy_correlation(table: pd.DataFrame) -> dict[str, float]:
    asm = table[table["kind"] == "assembly"]
    out = {}
    for proto in ("FZ", "FT"):
        col = f"{proto}_test_acc"
        if col in asm:
            sub = asm.dropna(subset=[col, "proxy"])
            out[f"kendall_tau_{proto}"] = kendall_tau(sub["proxy"].tolist(), sub[col].tolist())
            out[f"n_{proto}"] = len(sub)
    return out


def to_markdown(table: pd.DataFrame, float_fmt: str = "{:.3f}") -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, float):
                cells.append("" if math.isnan(v) else float_fmt.format(v))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
