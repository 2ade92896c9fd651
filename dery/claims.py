"""Measure the paper's claims on a finished run: analysis functions, no I/O, no Snakemake.

(a) CKA is stage-diagonal across families (paper Fig. 5): for every pair of models, each
    node's most similar node in the other model sits at about the same relative depth.
(b) Equivalence sets group blocks by stage position (paper §4), measured against random
    partitions, for dery's one-block-per-model sets and for the authors' argmax assignment.
(c) Reassembled networks beat the same architecture trained from scratch (Fig. 11, Table 9);
    and how they compare with the zoo models of equal or larger size. Mean ± sd over seeds.
(d) The training-free proxy ranks assemblies (Fig. 6): Kendall τ / Spearman ρ between each
    proxy's score and fine-tuned accuracy, with bootstrap confidence intervals. A better proxy
    is chosen on validation accuracy of one half of the assemblies and confirmed on the other.
(e) Cover-set partition and proxy ranking beat random choices (Table 2): each random arm's
    distinct networks against the pick's seeds.

A candidate whose blocks are one model's consecutive blocks is that zoo model with a new head
(``_single_model``), not a reassembly: it is kept out of (c)-(e) and reported on its own.

Every verdict is computed from the numbers by ``verdict`` (a confidence interval above 0:
"holds"; below 0: "reversed"; straddling 0: "inconclusive"; no interval: "n/a"), never written
by hand.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

# ------------------------------------------------------------------------------ verdicts


def verdict(lo: float, hi: float) -> str:
    """'holds' if the interval lies above 0, 'reversed' if below, 'inconclusive' if it straddles 0, 'n/a'
    without an interval (NaN bounds: too few samples, or no spread to estimate one from)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
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
    """Mean of a minus mean of b with a Welch t interval (unequal variances, ``scipy.stats.ttest_ind``).

    No interval (NaN bounds and p) with fewer than 2 samples on a side or no spread on either: a
    zero-width interval would call the difference of identical runs certain. The caller passes
    distinct samples (one per network: ``collapse_networks``), so copies never count as spread.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
    none = {"diff": diff, "lo": float("nan"), "hi": float("nan"), "p": float("nan")}
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return none
    with warnings.catch_warnings():  # one constant side is a valid Welch case; scipy warns of its zero variance
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        t = stats.ttest_ind(a, b, equal_var=False)
        ci = t.confidence_interval(level)
    return {"diff": diff, "lo": float(ci.low), "hi": float(ci.high), "p": float(t.pvalue)}


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
            "null_p05": float(np.quantile(null, 0.05)),
            "p_value": float((1 + np.sum(null <= obs)) / (1 + permutations)), "null": null}


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
    from . import random_starts as RS

    out = np.empty(draws)
    models = sorted(n_nodes)
    for d in range(draws):
        stages, labels, depth = [], [], []
        for m in models:
            cuts = RS.random_cuts(rng, n_nodes[m], k, P.size_bound(n_nodes[m], k, eps))
            blocks = P.blocks_from_cuts(m, cuts, n_nodes[m])
            lab = rng.permutation(k) if one_per_model else rng.integers(0, k, size=k)
            for b, lb in zip(blocks, lab, strict=True):
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


def _clean(groups: Sequence[tuple[Sequence[float], Sequence[float]]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Groups with missing values (None/NaN) dropped; a group with fewer than 3 usable points is left out."""
    clean = []
    for x, y in groups:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)  # None -> NaN
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() >= 3:
            clean.append((x[ok], y[ok]))
    return clean


def _pooled(fn: Callable, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """The n-weighted mean of ``fn`` over the groups where it is defined."""
    vals = [(fn(x, y), len(x)) for x, y in parts]
    vals = [(v, w) for v, w in vals if math.isfinite(v)]
    return float(np.average([v for v, _ in vals], weights=[w for _, w in vals])) if vals else float("nan")


def pooled_tau(groups: Sequence[tuple[Sequence[float], Sequence[float]]]) -> float:
    """Kendall τ within each group (budget), averaged weighted by group size; NaN when no group has 3 points."""
    return _pooled(_tau, _clean(groups))


def rank_correlation(groups: Sequence[tuple[Sequence[float], Sequence[float]]], n_boot: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """Kendall τ and Spearman ρ between score and accuracy, averaged over groups (budgets) weighted
    by their size, with percentile bootstrap intervals (assemblies resampled within each group).

    Missing scores (None/NaN) are dropped. A group with fewer than 3 usable points is ignored.
    """
    clean = _clean(groups)
    n = int(sum(len(x) for x, _ in clean))
    if not clean:
        return {"tau": float("nan"), "rho": float("nan"), "tau_lo": float("nan"), "tau_hi": float("nan"),
                "rho_lo": float("nan"), "rho_hi": float("nan"), "n": n}
    tau, rho = _pooled(_tau, clean), _pooled(_rho, clean)
    rng = np.random.default_rng(seed)
    bt, br = [], []
    for _ in range(n_boot):
        parts = []
        for x, y in clean:
            i = rng.integers(0, len(x), len(x))
            parts.append((x[i], y[i]))
        bt.append(_pooled(_tau, parts))
        br.append(_pooled(_rho, parts))
    bt, br = np.asarray(bt), np.asarray(br)
    bt, br = bt[np.isfinite(bt)], br[np.isfinite(br)]
    q = lambda v, a: float(np.quantile(v, a)) if len(v) else float("nan")  # noqa: E731
    return {"tau": tau, "rho": rho, "tau_lo": q(bt, 0.025), "tau_hi": q(bt, 0.975), "rho_lo": q(br, 0.025),
            "rho_hi": q(br, 0.975), "n": n}


def split_halves(ids: Sequence[str], seed: int, budget: str) -> tuple[list[str], list[str]]:
    """One budget's fine-tuned assemblies split at random into a selection half (the larger one for an odd
    count) and a held-out half. Deterministic: the ids are sorted, then permuted by a generator seeded with
    (seed, budget name), so every budget gets its own split and a rerun the same one."""
    order = sorted(ids)
    perm = np.random.default_rng([seed, 31, *map(ord, budget)]).permutation(len(order))
    half = (len(order) + 1) // 2
    return sorted(order[i] for i in perm[:half]), sorted(order[i] for i in perm[half:])


@dataclass
class ProxySelection:
    selected: str                            # best τ against validation accuracy on the selection halves
    selection_tau: dict[str, float]
    heldout_tau: dict[str, float]            # τ against validation accuracy on the held-out halves
    heldout_best: str
    wins_heldout: bool
    recommended: str                         # the proxy to make the default
    split: dict[str, dict[str, list[str]]]   # budget -> {"selection": ids, "heldout": ids}
    heldout_test_tau: dict[str, float]       # τ against test accuracy on the held-out halves: reported, never used


def select_proxy(assemblies: dict[str, dict[str, dict[str, Any]]], names: Sequence[str], current: str,
                 seed: int) -> ProxySelection | None:
    """Choose a proxy on validation accuracy and confirm it on assemblies it was not chosen on.

    ``assemblies``: budget -> assembly id -> {"scores": {proxy: score}, "val_acc": ..., "test_acc": ...}
    (accuracies: means over the fine-tuning seeds). Each budget's assemblies are split by ``split_halves``;
    the proxy with the highest pooled τ against validation accuracy on the selection halves is
    recommended only if it also has the highest τ on the held-out halves and that τ is positive (else
    ``current`` stays). Test accuracy is never used to choose: seeds of the same assemblies would not be
    held out, and choosing on the test set leaves no unbiased number to report. None when either half
    has no budget with 3 assemblies (τ undefined).
    """
    split = {b: split_halves(list(c), seed, b) for b, c in sorted(assemblies.items())}

    def tau(name: str, half: int, acc: str) -> float:
        return pooled_tau([([assemblies[b][i]["scores"].get(name) for i in h[half]],
                            [assemblies[b][i].get(acc) for i in h[half]]) for b, h in split.items()])

    sel = {n: tau(n, 0, "val_acc") for n in names}
    held = {n: tau(n, 1, "val_acc") for n in names}
    sel_ok = {k: v for k, v in sel.items() if math.isfinite(v)}
    held_ok = {k: v for k, v in held.items() if math.isfinite(v)}
    if not sel_ok or not held_ok:
        return None
    best = max(sorted(sel_ok), key=lambda k: sel_ok[k])
    held_best = max(sorted(held_ok), key=lambda k: held_ok[k])
    wins = best == held_best and held_ok.get(best, float("nan")) > 0
    return ProxySelection(best, sel, held, held_best, wins, best if wins else current,
                          {b: {"selection": h[0], "heldout": h[1]} for b, h in split.items()},
                          {n: tau(n, 1, "test_acc") for n in names})


# ------------------------------------------------------------------ (e) random assemblies


def _single_model(blocks: Sequence[dict[str, Any]]) -> str | None:
    """The model id when ``blocks`` are one model's consecutive blocks (a zoo model re-headed), else None: the
    program's own rule (``reassembly.single_model``), imported late as that module loads torch."""
    from .reassembly import single_model

    return single_model(list(blocks))


def network_key(blocks: Sequence[dict[str, Any]]) -> tuple[tuple[str, int, int], ...]:
    """What makes two assemblies the same network: their blocks (model, start, end), in order."""
    return tuple((b["model"], int(b["start"]), int(b["end"])) for b in blocks)


def collapse_networks(runs: Sequence[tuple[Sequence[dict[str, Any]], float]]) -> list[dict[str, Any]]:
    """(blocks, accuracy) runs -> one sample per distinct network, the mean of its runs, in first-seen order.
    Two draws of a random arm that land on the same network are one network fine-tuned twice, not two
    independent draws of the arm."""
    groups: dict[tuple, list[float]] = {}
    for blocks, acc in runs:
        groups.setdefault(network_key(blocks), []).append(float(acc))
    return [{"network": k, "acc": float(np.mean(v)), "runs": len(v)} for k, v in groups.items()]


def arm_comparison(pick: Sequence[float], pick_blocks: Sequence[dict[str, Any]] | None,
                   runs: Sequence[tuple[Sequence[dict[str, Any]], float]]) -> dict[str, Any]:
    """The pick (one network over seeds) minus a random arm (one sample per distinct network).

    A run whose network is one zoo model with a new head is no reassembly: it is left out of the arm and
    returned under ``single_model`` (model -> mean, sd, n of its runs). ``same_as_pick`` (0 or 1): whether one of the
    arm's networks is the pick's own (it stays in: the arm drew it, but the reader should know).
    """
    genuine, zoo = [], {}
    for blocks, acc in runs:
        m = _single_model(blocks)
        if m:
            zoo.setdefault(m, []).append(float(acc))
        else:
            genuine.append((blocks, acc))
    nets = collapse_networks(genuine)
    accs = [n["acc"] for n in nets]
    ci = welch_ci(pick, accs) if len(pick) and accs else None
    mine = network_key(pick_blocks) if pick_blocks else None
    return {"acc": mean_sd(accs), "vs_pick": ci, "verdict": verdict(ci["lo"], ci["hi"]) if ci else "not measured",
            "draws": len(runs), "networks": len(nets), "runs_per_network": [n["runs"] for n in nets],
            "same_as_pick": sum(n["network"] == mine for n in nets),
            "blocks": [" > ".join(f"{m}[{a}-{b}]" for m, a, b in n["network"]) for n in nets],
            "single_model": {m: mean_sd(v) for m, v in zoo.items()}}


def uniform_feasible(inst, max_params: float, max_macs: float, forbid, rng: np.random.Generator,
                     tries: int = 200_000, keep_single_model: bool = False) -> tuple[list[dict], float, float] | None:
    """One feasible assembly drawn uniformly: rejection sampling from one block per stage drawn
    uniformly (uniform over the feasible set), exhaustive enumeration as the fallback. One model's
    consecutive blocks (a zoo model re-headed, no reassembly) are not feasible unless ``keep_single_model``."""
    import itertools

    from . import reassembly as R

    by_stage = [[b for b in inst.blocks if b["stage"] == s] for s in range(inst.k)]
    if any(not s for s in by_stage):
        return None

    def feasible(combo):
        if len({b["set"] for b in combo}) != inst.k or (not keep_single_model and _single_model(combo)):
            return None
        if not all(R.allowed(a, b, forbid) for a, b in zip(combo, combo[1:], strict=False)):
            return None
        p, m = inst.totals(list(combo))
        return (p, m) if p <= max_params and m <= max_macs else None

    for _ in range(tries):
        combo = [s[rng.integers(len(s))] for s in by_stage]
        pm = feasible(combo)
        if pm:
            return combo, pm[0], pm[1]
    every = [(list(c), *pm) for c in itertools.product(*by_stage) if (pm := feasible(list(c)))]
    if not every:
        return None
    c, p, m = every[rng.integers(len(every))]
    return c, p, m


def uniform_cuts(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """K-1 distinct cut points drawn uniformly among the n-1 gaps of an n-node model (a cut is the first node
    of stages 1..K-1, in 2..n), with no size bound: every block has >= 1 node, any split is possible."""
    if n < k:
        raise ValueError(f"{n} nodes cannot make {k} non-empty blocks")
    return sorted(int(c) for c in rng.choice(np.arange(2, n + 1), size=k - 1, replace=False))


def random_cut_partition(n_nodes: dict[str, int], k: int, sim, rng: np.random.Generator) -> dict[str, Any]:
    """Table 2's "no cover-set partition": each model cut at uniform random points (``uniform_cuts``: same K,
    no size bound) and each block put in the set of its stage index; set anchors are the medoids (for the
    program's enumeration order only). Against the pipeline it removes the CKA-driven cut placement and
    set grouping and keeps the program and the proxy. (The size bound would leave only a few cuttings per
    model, nearly the pipeline's own partition; the null of claim (b) keeps it, as the partition does.)"""
    from dataclasses import asdict

    from . import partition as P

    blocks = []
    for m in sorted(n_nodes):
        blocks += P.blocks_from_cuts(m, uniform_cuts(rng, n_nodes[m], k), n_nodes[m])
    anchors = []
    for j in range(k):
        members = [b for b in blocks if b.stage == j]
        scores = [sum(sim.block(a, c) for c in members if c != a) for a in members]
        anchors.append(members[int(np.argmax(scores))])
    out = {"objective": float(sum(sim.block(b, anchors[b.stage]) for b in blocks)), "kind": "uniform random cuts",
           "anchors": [asdict(a) for a in anchors],
           "sets": [[asdict(b) for b in blocks if b.stage == j] for j in range(k)],
           "blocks": [dict(asdict(b), set=b.stage, anchor_similarity=sim.block(b, anchors[b.stage])) for b in blocks]}
    out["stage_alignment"] = 1.0
    return out
