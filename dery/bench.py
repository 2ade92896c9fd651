"""Reassembly-Bench: which assemblies are benchmarked, and what the finished benchmark says. No I/O, no Snakemake.

The bench fine-tunes every feasible candidate of a budget (or, where there are too many, a sample stratified by
size), with several seeds and both protocols, and scores each with every proxy; the result is one table
(``bench.csv``) that anyone can score a new proxy against without training. This module:

- draws the sample (``stratified_sample``: one candidate per equal-count params bin, so every size is
  represented in proportion, and no proxy under test chose it);
- spreads the stitching comparison over it (``spread``);
- scores each proxy against fine-tuned accuracy (``proxy_table``: Kendall τ / Spearman ρ with bootstrap
  intervals, pooled over budgets as ``dery.claims.rank_correlation``) and picks a default on validation
  accuracy of held-out assemblies only (``dery.claims.select_proxy``);
- compares each budget's pick with the same architecture from scratch, with the zoo models that fit the
  budget and with a random feasible assembly (``pick_comparison``), and each adapter variant with
  least-squares adapters on the same assemblies (``stitching_comparison``, paired over assemblies).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from . import claims as C


def stratified_sample(candidates: Sequence[dict[str, Any]], n: int, seed: int, budget: str) -> list[str]:
    """Ids of the benchmarked candidates: all of them when there are at most ``n``, else one drawn uniformly
    from each of ``n`` equal-count bins of the candidates sorted by params (ties by id). Seeded per budget."""
    if len(candidates) <= n:
        return sorted(c["id"] for c in candidates)
    order = sorted(candidates, key=lambda c: (c["params"], c["id"]))
    rng = np.random.default_rng([seed, 47, *map(ord, budget)])
    return sorted(str(b[rng.integers(len(b))]["id"]) for b in np.array_split(np.array(order, dtype=object), n))


def spread(ids: Sequence[str], k: int) -> list[str]:
    """``k`` of ``ids`` evenly spread over them in the given order (first and last included); all if fewer."""
    if k >= len(ids):
        return list(ids)
    if k <= 0:
        return []
    return [ids[i] for i in sorted({int(round(j * (len(ids) - 1) / max(k - 1, 1))) for j in range(k)})]


def picks(scores: dict[str, dict[str, float | None]], names: Sequence[str]) -> dict[str, str | None]:
    """Each proxy's pick: the candidate id with the highest score (ties: smallest id); None if none scored."""
    out = {}
    for name in names:
        ok = [(v, i) for i, s in scores.items() if (v := s.get(name)) is not None and math.isfinite(v)]
        out[name] = min(ok, key=lambda t: (-t[0], t[1]))[1] if ok else None
    return out


def _mean(v: Sequence[float | None]) -> float:
    v = [x for x in v if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def assemblies_by_budget(rows: Sequence[dict[str, Any]], protocol: str, stitching: str = "lstsq"
                         ) -> dict[str, dict[str, dict[str, Any]]]:
    """Bench rows -> budget -> id -> {"scores", "val_acc", "test_acc", "test_accs"} (seed means), one protocol."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] != "assembly" or r["protocol"] != protocol or r["stitching"] != stitching:
            continue
        out.setdefault(r["budget"], {})[r["id"]] = {
            "scores": r["scores"], "val_acc": _mean(r["val_acc"]), "test_acc": _mean(r["test_acc"]),
            "test_accs": [a for a in r["test_acc"] if a is not None], "blocks": r["blocks"]}
    return out


def proxy_table(rows: Sequence[dict[str, Any]], names: Sequence[str], protocol: str, seconds: dict[str, float],
                n_boot: int, seed: int, current: str) -> dict[str, Any]:
    """τ/ρ (with intervals) of every proxy against seed-mean test accuracy, pooled over budgets; the seconds each
    takes per candidate; and the validation-only selection of a default, confirmed on held-out assemblies."""
    by_budget = assemblies_by_budget(rows, protocol)
    corr = {}
    for name in names:
        groups = [([a["scores"].get(name) for a in asm.values()], [a["test_acc"] for a in asm.values()])
                  for asm in by_budget.values()]
        corr[name] = {**C.rank_correlation(groups, n_boot, seed), "seconds": seconds.get(name, float("nan"))}
    sel = C.select_proxy(by_budget, names, current, seed)
    return {"protocol": protocol, "proxies": corr, "selection": sel.__dict__ if sel else None,
            "assemblies": {b: len(a) for b, a in by_budget.items()}}


def pick_comparison(rows: Sequence[dict[str, Any]], pick: dict[str, str | None], budgets: dict[str, dict],
                    protocol: str = "FT") -> dict[str, Any]:
    """Per budget: the pick's test accuracy over seeds against the same architecture from scratch (its seeds),
    each zoo model that fits the budget (its seeds), and a random feasible assembly (one sample per benchmarked
    assembly: its seed mean; for a full bench this is the budget's whole feasible set). Welch intervals."""
    by_budget = assemblies_by_budget(rows, protocol)
    out = {}
    for b, asm in sorted(by_budget.items()):
        pid = pick.get(b)
        if pid is None or pid not in asm:
            out[b] = {"pick": None}
            continue
        mine = asm[pid]["test_accs"]
        lim = budgets[b]
        scratch = [r for r in rows if r["kind"] == "scratch" and r["budget"] == b and r["id"] == pid]
        zoo = {r["id"]: r for r in rows if r["kind"] == "zoo" and r["params"] <= lim["params_m"] * 1e6
               and r["macs"] <= lim["macs_m"] * 1e6}
        others = [a["test_acc"] for a in asm.values() if math.isfinite(a["test_acc"])]
        out[b] = {"pick": pid, "blocks": asm[pid]["blocks"], "acc": C.mean_sd(mine),
                  "scratch": _versus(mine, scratch[0]["test_acc"]) if scratch else None,
                  "zoo": {m: _versus(mine, r["test_acc"]) for m, r in sorted(zoo.items())},
                  "random_feasible": {**_versus(mine, others), "networks": len(others)}}
    return out


def _versus(mine: Sequence[float], acc: Sequence[float | None]) -> dict[str, Any]:
    """The pick's accuracies minus another arm's: Welch interval and verdict."""
    acc = [a for a in acc if a is not None]
    ci = C.welch_ci(mine, acc) if mine and acc else None
    return {"acc": C.mean_sd(acc), "diff": ci, "verdict": C.verdict(ci["lo"], ci["hi"]) if ci else "n/a"}


def paired_ci(diffs: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of paired differences with a t interval; NaN bounds with fewer than 2 pairs or no spread."""
    d = np.asarray([x for x in diffs if math.isfinite(x)], float)
    mean = float(d.mean()) if len(d) else float("nan")
    if len(d) < 2 or np.ptp(d) == 0:
        return {"diff": mean, "lo": float("nan"), "hi": float("nan"), "n": len(d)}
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return {"diff": mean, "lo": mean - half, "hi": mean + half, "n": len(d)}


def stitching_comparison(rows: Sequence[dict[str, Any]], variants: Sequence[str], base: str = "lstsq",
                         protocol: str = "FT") -> dict[str, Any]:
    """Per budget and variant: seed-mean test accuracy over the compared assemblies, and the paired difference
    from ``base`` adapters on the same assemblies (each assembly's seed mean is one pair)."""
    out: dict[str, Any] = {}
    ref = assemblies_by_budget(rows, protocol, base)
    runs = {v: assemblies_by_budget(rows, protocol, v) for v in variants}
    # the base row covers the assemblies the other variants ran on, not every benchmarked one: like with like
    compared = {b: {i for v in variants if v != base for i in runs[v].get(b, {})} for b in ref}
    for v in variants:
        for b, asm in sorted(runs[v].items()):
            ids = [i for i in sorted(asm) if i in ref.get(b, {}) and (v != base or i in compared.get(b, ()))]
            pairs = [(asm[i]["test_acc"], ref[b][i]["test_acc"]) for i in ids]
            ci = paired_ci([x - y for x, y in pairs]) if v != base else None
            out.setdefault(b, {})[v] = {"acc": C.mean_sd([x for x, _ in pairs]), "n": len(pairs),
                                        "vs_base": ci, "verdict": C.verdict(ci["lo"], ci["hi"]) if ci else ""}
    return out
