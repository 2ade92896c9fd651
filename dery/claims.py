"""Measure the paper's claims on a finished run: analysis functions, no I/O, no Snakemake.

(a) CKA is stage-diagonal across families (paper Fig. 5): for every pair of models, each
    node's most similar node in the other model sits at about the same relative depth.
(b) Equivalence sets group blocks by stage position (paper §4), measured against random
    partitions, for dery's one-block-per-model sets and for the authors' argmax assignment.
(c) Reassembled networks beat the same architecture trained from scratch (Fig. 11, Table 9);
    and how they compare with the zoo models of equal or larger size. Mean ± sd over seeds.
(d) The training-free proxy ranks assemblies (Fig. 6): Kendall τ / Spearman ρ between each
    proxy's score and fine-tuned accuracy, with bootstrap confidence intervals.
(e) Cover-set partition and proxy ranking beat random choices (Table 2).

Every verdict is computed from the numbers by ``verdict`` (a confidence interval above 0:
"holds"; below 0: "reversed"; straddling 0: "inconclusive"), never written by hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

# ------------------------------------------------------------------------------ verdicts


def verdict(lo: float, hi: float) -> str:
    """'holds' if the interval lies above 0, 'reversed' if below, 'inconclusive' otherwise."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "not measurable"
    if lo > 0:
        return "holds"
    if hi < 0:
        return "reversed"
    return "inconclusive"


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v)


def welch_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of a minus mean of b with a Welch t interval (unequal variances)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "lo": float("nan"), "hi": float("nan"), "p": float("nan")}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "lo": diff, "hi": diff, "p": 0.0 if diff != 0 else 1.0}
    dof = (va + vb) ** 2 / ((va**2 / (len(a) - 1)) + (vb**2 / (len(b) - 1)))
    q = stats.t.ppf(0.5 + level / 2, dof)
    p = 2 * stats.t.sf(abs(diff) / se, dof)
    return {"diff": diff, "lo": diff - q * se, "hi": diff + q * se, "p": float(p)}


# ------------------------------------------------------------------ (a) CKA depth alignment


def _match_depths(cka: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows i -> (relative depth of i, relative depth of argmax_j cka[i, j]); depth = index / last index."""
    na, nb = cka.shape[0] - 1, cka.shape[1] - 1
    own = np.arange(na + 1) / max(na, 1)
    best = np.argmax(cka, axis=1) / max(nb, 1)
    return own, best


def depth_alignment(cka: np.ndarray, rng: np.random.Generator, permutations: int = 1000) -> dict[str, Any]:
    """How close each node's most similar node (of the other model) is to the same relative depth.

    ``cka`` is [stem + nodes of A] x [stem + nodes of B]. Both directions are used (A's nodes
    matched in B, B's in A). ``mean_abs_ddepth`` is the mean |depth - matched depth|; the null
    shuffles the other model's node order (its depths become unrelated to the similarity).
    """
    a_own, a_best = _match_depths(cka)
    b_own, b_best = _match_depths(cka.T)
    own, best = np.concatenate([a_own, b_own]), np.concatenate([a_best, b_best])
    obs = float(np.mean(np.abs(own - best)))
    rho = float(stats.spearmanr(own, best).statistic) if np.ptp(best) > 0 else float("nan")
    null = np.empty(permutations)
    for p in range(permutations):
        ca = cka[:, rng.permutation(cka.shape[1])]
        cb = cka[rng.permutation(cka.shape[0]), :]
        o1, b1 = _match_depths(ca)
        o2, b2 = _match_depths(cb.T)
        null[p] = np.mean(np.abs(np.concatenate([o1, o2]) - np.concatenate([b1, b2])))
    return {"mean_abs_ddepth": obs, "spearman": rho, "null_mean": float(null.mean()),
            "null_p05": float(np.quantile(null, 0.05)), "p_value": float((1 + np.sum(null <= obs)) / (1 + permutations)),
            "null": null}


def summarise_depth_alignment(per_pair: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Across model pairs: mean |Δdepth| against the mean of the per-pair nulls (same permutation index)."""
    obs = float(np.mean([r["mean_abs_ddepth"] for r in per_pair.values()]))
    null = np.mean(np.stack([r["null"] for r in per_pair.values()]), axis=0)
    p = float((1 + np.sum(null <= obs)) / (1 + len(null)))
    gap = null - obs  # > 0 when the observed matching is closer to the diagonal than shuffled
    lo, hi = float(np.quantile(gap, 0.025)), float(np.quantile(gap, 0.975))
    return {"pairs": len(per_pair), "mean_abs_ddepth": obs, "null_mean": float(null.mean()),
            "mean_spearman": float(np.nanmean([r["spearman"] for r in per_pair.values()])),
            "pairs_significant": int(sum(r["p_value"] < 0.05 for r in per_pair.values())),
            "p_value": p, "gap": float(null.mean() - obs), "gap_lo": lo, "gap_hi": hi,
            "verdict": "holds" if p < 0.05 else "inconclusive" if obs < null.mean() else "reversed"}


# ------------------------------------------------------------------ (b) stage alignment


def alignment(stages: Sequence[int], sets: Sequence[int]) -> float:
    return float(np.mean(np.asarray(stages) == np.asarray(sets)))


def random_partition_alignment(n_nodes: dict[str, int], k: int, eps: float, one_per_model: bool,
                               rng: np.random.Generator, draws: int = 1000) -> np.ndarray:
    """Stage alignment of random partitions: random cuts within the size bound, random set labels
    (a random permutation per model with ``one_per_model``, else independent uniform labels), then
    the sets renumbered by the mean relative depth of their members, as ``partition.partition`` does."""
    from . import partition as P

    out = np.empty(draws)
    models = sorted(n_nodes)
    for d in range(draws):
        stages, labels, depth = [], [], []
        for m in models:
            cuts = P._random_cuts(rng, n_nodes[m], k, P.size_bound(n_nodes[m], k, eps))
            blocks = P.blocks_from_cuts(m, cuts, n_nodes[m])
            lab = rng.permutation(k) if one_per_model else rng.integers(0, k, size=k)
            for b, lb in zip(blocks, lab):
                stages.append(b.stage)
                labels.append(int(lb))
                depth.append((b.start + b.end) / 2 / n_nodes[m])
        labels_a, depth_a = np.asarray(labels), np.asarray(depth)
        mean_depth = [depth_a[labels_a == j].mean() if np.any(labels_a == j) else j for j in range(k)]
        rename = {int(old): new for new, old in enumerate(np.argsort(mean_depth, kind="stable"))}
        out[d] = alignment(stages, [rename[int(lb)] for lb in labels_a])
    return out


def alignment_against_random(observed: float, null: np.ndarray) -> dict[str, Any]:
    p = float((1 + np.sum(null >= observed)) / (1 + len(null)))
    return {"alignment": observed, "random_mean": float(null.mean()), "random_p95": float(np.quantile(null, 0.95)),
            "p_value": p, "verdict": "holds" if p < 0.05 else "inconclusive" if observed > null.mean() else "reversed"}


# ------------------------------------------------------------------ (d) rank correlation


def _tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall τ-b (ties corrected, as ``scipy.stats.kendalltau``), O(n²) with numpy for the bootstrap."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    num = float((sx * sy).sum())
    den = math.sqrt(float(np.abs(sx).sum()) * float(np.abs(sy).sum()))
    return num / den if den > 0 else float("nan")


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ: Pearson correlation of average ranks."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx**2).sum() * (ry**2).sum()))


def rank_correlation(groups: Sequence[tuple[Sequence[float], Sequence[float]]], n_boot: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """Kendall τ and Spearman ρ between score and accuracy, averaged over groups (budgets) weighted
    by their size, with percentile bootstrap intervals (assemblies resampled within each group).

    Missing scores (None/NaN) are dropped. A group with fewer than 3 usable points is ignored.
    """
    clean = []
    for x, y in groups:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() >= 3:
            clean.append((x[ok], y[ok]))
    n = int(sum(len(x) for x, _ in clean))
    if not clean:
        return {"tau": float("nan"), "rho": float("nan"), "tau_lo": float("nan"), "tau_hi": float("nan"),
                "rho_lo": float("nan"), "rho_hi": float("nan"), "n": n}

    def pooled(fn: Callable, parts) -> float:
        vals = [(fn(x, y), len(x)) for x, y in parts]
        vals = [(v, w) for v, w in vals if math.isfinite(v)]
        return float(np.average([v for v, _ in vals], weights=[w for _, w in vals])) if vals else float("nan")

    tau, rho = pooled(_tau, clean), pooled(_rho, clean)
    rng = np.random.default_rng(seed)
    bt, br = [], []
    for _ in range(n_boot):
        parts = []
        for x, y in clean:
            i = rng.integers(0, len(x), len(x))
            parts.append((x[i], y[i]))
        bt.append(pooled(_tau, parts))
        br.append(pooled(_rho, parts))
    bt, br = np.asarray(bt), np.asarray(br)
    bt, br = bt[np.isfinite(bt)], br[np.isfinite(br)]
    q = lambda v, a: float(np.quantile(v, a)) if len(v) else float("nan")  # noqa: E731
    return {"tau": tau, "rho": rho, "tau_lo": q(bt, 0.025), "tau_hi": q(bt, 0.975), "rho_lo": q(br, 0.025),
            "rho_hi": q(br, 0.975), "n": n}


@dataclass
class ProxySelection:
    selected: str                 # best proxy by τ on the selection seed
    selection_tau: dict[str, float]
    heldout_tau: dict[str, float]
    heldout_best: str
    wins_heldout: bool
    recommended: str              # the proxy to make the default


def select_proxy(tau_by_seed: dict[int, dict[str, float]], current: str) -> ProxySelection | None:
    """Pick the best proxy by τ on the first seed; it is recommended only if it also has the highest
    mean τ on the held-out seeds and that τ is positive (else the current default stays). None
    without held-out seeds."""
    seeds = sorted(tau_by_seed)
    if len(seeds) < 2:
        return None
    sel = {k: v for k, v in tau_by_seed[seeds[0]].items() if math.isfinite(v)}
    held = {}
    for name in tau_by_seed[seeds[0]]:
        vals = [tau_by_seed[s].get(name, float("nan")) for s in seeds[1:]]
        vals = [v for v in vals if math.isfinite(v)]
        held[name] = float(np.mean(vals)) if vals else float("nan")
    if not sel:
        return None
    best = max(sorted(sel), key=lambda k: sel[k])
    held_ok = {k: v for k, v in held.items() if math.isfinite(v)}
    held_best = max(sorted(held_ok), key=lambda k: held_ok[k]) if held_ok else ""
    wins = best == held_best and held_ok.get(best, float("nan")) > 0
    return ProxySelection(best, sel, held, held_best, wins, best if wins else current)


# ------------------------------------------------------------------ (e) random assemblies


def uniform_feasible(inst, max_params: float, max_macs: float, forbid, rng: np.random.Generator,
                     tries: int = 200_000) -> tuple[list[dict], float, float] | None:
    """One feasible assembly drawn uniformly: rejection sampling from one block per stage drawn
    uniformly (uniform over the feasible set), exhaustive enumeration as the fallback."""
    from . import reassembly as R

    by_stage = [[b for b in inst.blocks if b["stage"] == s] for s in range(inst.k)]
    if any(not s for s in by_stage):
        return None

    def feasible(combo):
        if len({b["set"] for b in combo}) != inst.k:
            return None
        if not all(R.allowed(a, b, forbid) for a, b in zip(combo, combo[1:])):
            return None
        p, m = inst.totals(list(combo))
        return (p, m) if p <= max_params and m <= max_macs else None

    for _ in range(tries):
        combo = [s[rng.integers(len(s))] for s in by_stage]
        pm = feasible(combo)
        if pm:
            return combo, pm[0], pm[1]
    every = [(c, p, m) for c, p, m, _ in R.brute_force(inst, max_params, max_macs, forbid)]
    if not every:
        return None
    c, p, m = every[rng.integers(len(every))]
    return c, p, m


def random_cut_partition(n_nodes: dict[str, int], k: int, eps: float, sim, rng: np.random.Generator) -> dict[str, Any]:
    """Table 2's "no cover-set partition": random cut points within the size bound, each block in the
    set of its stage index; set anchors are the medoids (for the program's enumeration order only)."""
    from dataclasses import asdict

    from . import partition as P

    blocks = []
    for m in sorted(n_nodes):
        cuts = P._random_cuts(rng, n_nodes[m], k, P.size_bound(n_nodes[m], k, eps))
        blocks += P.blocks_from_cuts(m, cuts, n_nodes[m])
    anchors = []
    for j in range(k):
        members = [b for b in blocks if b.stage == j]
        scores = [sum(sim.block(a, c) for c in members if c != a) for a in members]
        anchors.append(members[int(np.argmax(scores))])
    out = {"objective": float(sum(sim.block(b, anchors[b.stage]) for b in blocks)), "kind": "random cuts",
           "anchors": [asdict(a) for a in anchors],
           "sets": [[asdict(b) for b in blocks if b.stage == j] for j in range(k)],
           "blocks": [dict(asdict(b), set=b.stage, anchor_similarity=sim.block(b, anchors[b.stage])) for b in blocks]}
    out["stage_alignment"] = 1.0
    return out
