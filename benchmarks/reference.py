"""Naive reference implementations the benchmarks compare dery against.

- ``partition``: the cover-set partition solver exactly as it was before it was vectorised
  (one restart at a time, one Python call per block similarity). It is the oracle for the
  "identical results" check of ``dery.partition.partition`` (benchmarks and tests).
- ``cka_per_pair``: linear CKA one node pair at a time, the authors' loop.
- ``random_search``: the authors' reassembly search (dery-method.md §5).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dery.partition import Block, PartitionError, Result, Similarity, blocks_from_cuts, size_bound
from dery.reassembly import Instance, allowed

# ----------------------------------------------------------------------------- partition (frozen copy)

def _assign(blocks: dict[str, list[Block]], anchors: list[Block], sim: Similarity,
            one_per_model: bool) -> dict[tuple[str, int], int]:
    from scipy.optimize import linear_sum_assignment

    labels = {}
    for m, bs in blocks.items():
        score = np.array([[sim.block(b, a) + (1e6 if b == a else 0.0) for a in anchors] for b in bs])
        if one_per_model:
            rows, cols = linear_sum_assignment(-score)
            labels.update({(m, int(r)): int(c) for r, c in zip(rows, cols, strict=True)})
        else:
            labels.update({(m, s): int(np.argmax(score[s])) for s in range(len(bs))})
    return labels


def _random_cuts(rng: np.random.Generator, n: int, k: int, bound: int) -> list[int]:
    for _ in range(10_000):
        cuts = sorted(rng.choice(np.arange(2, n + 1), size=k - 1, replace=False).tolist())
        sizes = np.diff([1] + cuts + [n + 1])
        if sizes.max() <= bound:
            return cuts
    return [1 + round(i * n / k) for i in range(1, k)]


def _solve_once(sim: Similarity, n_nodes: dict[str, int], k: int, eps: float, iters: int,
                rng: np.random.Generator,
                one_per_model: bool) -> tuple[dict[str, list[int]], list[tuple[str, int]], float]:
    models = sorted(n_nodes)
    bounds = {m: size_bound(n_nodes[m], k, eps) for m in models}
    cuts = {m: _random_cuts(rng, n_nodes[m], k, bounds[m]) for m in models}
    blocks = {m: blocks_from_cuts(m, cuts[m], n_nodes[m]) for m in models}
    all_refs = [(m, s) for m in models for s in range(k)]
    anchors = [all_refs[i] for i in rng.choice(len(all_refs), size=k, replace=False)]

    def anchor_block(j: int) -> Block:
        m, s = anchors[j]
        return blocks[m][s]

    def assign() -> dict[tuple[str, int], int]:
        return _assign(blocks, [anchor_block(j) for j in range(k)], sim, one_per_model)

    labels = assign()
    prev = None
    for _ in range(iters):
        for m in models:
            for b in range(k - 1):
                best_cuts, best_val = cuts[m], None
                for delta in (0, -1, 1):
                    trial = list(cuts[m])
                    trial[b] += delta
                    edges = [1] + trial + [n_nodes[m] + 1]
                    sizes = np.diff(edges)
                    if sizes.min() < 1 or sizes.max() > bounds[m]:
                        continue
                    tb = blocks_from_cuts(m, trial, n_nodes[m])
                    anchors_now = [anchor_block(j) if anchors[j][0] != m else tb[anchors[j][1]] for j in range(k)]
                    val = sum(sim.block(tb[s], anchors_now[labels[(m, s)]]) for s in range(k))
                    if best_val is None or val > best_val + 1e-12:
                        best_cuts, best_val = trial, val
                cuts[m] = best_cuts
                blocks[m] = blocks_from_cuts(m, cuts[m], n_nodes[m])
        labels = assign()
        for j in range(k):
            members = [r for r, lab in labels.items() if lab == j]
            if not members:
                worst = min(labels, key=lambda r: sim.block(blocks[r[0]][r[1]], anchor_block(labels[r])))
                labels[worst] = j
                members = [worst]
            scores = [sum(sim.block(blocks[a[0]][a[1]], blocks[c[0]][c[1]]) for c in members if c != a)
                      for a in members]
            anchors[j] = members[int(np.argmax(scores))]
        labels = assign()
        state = (tuple(tuple(cuts[m]) for m in models), tuple(anchors), tuple(sorted(labels.items())))
        if state == prev:
            break
        prev = state
    obj = sum(sim.block(blocks[r[0]][r[1]], anchor_block(lab)) for r, lab in labels.items())
    return cuts, list(anchors), float(obj)


def partition(pairs: dict[tuple[str, str], np.ndarray], n_nodes: dict[str, int], k: int, eps: float,
              restarts: int, iters: int, seed: int, one_per_model: bool = True) -> Result:
    """The pre-vectorisation ``dery.partition.partition``, kept verbatim as the oracle."""
    too_short = {m: n for m, n in n_nodes.items() if n < k}
    if too_short:
        raise PartitionError(f"K = {k} is larger than the node count of {too_short}")
    sim = Similarity(pairs)
    best = None
    for r in range(restarts):
        cuts, anchors, obj = _solve_once(sim, n_nodes, k, eps, iters, np.random.default_rng([seed, r]), one_per_model)
        if best is None or obj > best[2] + 1e-9:
            best = (cuts, anchors, obj, r)
    cuts, anchors, obj, r = best
    blocks = [b for m in sorted(n_nodes) for b in blocks_from_cuts(m, cuts[m], n_nodes[m])]
    by_ref = {(b.model, b.stage): b for b in blocks}
    anchor_blocks = [by_ref[a] for a in anchors]
    labels = _assign({m: [b for b in blocks if b.model == m] for m in n_nodes}, anchor_blocks, sim, one_per_model)
    raw = {b: labels[(b.model, b.stage)] for b in blocks}
    depth = [np.mean([(b.start + b.end) / 2 / n_nodes[b.model] for b in blocks if raw[b] == j] or [j])
             for j in range(k)]
    order = np.argsort(depth, kind="stable")
    rename = {int(old): new for new, old in enumerate(order)}
    return Result(blocks, {b: rename[raw[b]] for b in blocks}, [anchor_blocks[int(o)] for o in order], obj, r)


# ----------------------------------------------------------------------------- linear CKA, one node pair at a time

def cka_per_pair(x: np.ndarray, y: np.ndarray) -> float:
    """The authors' ``cka_linear_torch`` for one node pair: both Gram matrices, centred, then the ratio."""
    xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    k, l_ = xt @ xt.T, yt @ yt.T

    def centre(g: torch.Tensor) -> torch.Tensor:
        return g - g.mean(0, keepdim=True) - g.mean(1, keepdim=True) + g.mean()

    kc, lc = centre(k), centre(l_)
    return float((kc * lc).sum() / (kc.norm() * lc.norm()))


def cka_loop(fa: list[np.ndarray], fb: list[np.ndarray]) -> np.ndarray:
    """Every node pair of two models by the per-pair loop."""
    return np.array([[cka_per_pair(x, y) for y in fb] for x in fa])


# ----------------------------------------------------------------------------- the authors' random search

def random_search(inst: Instance, max_params: float, max_macs: float, forbid: list[list[str]], trials: int,
                  seed: int) -> tuple[dict[tuple, float], int, int]:
    """``zeroshot_reassembly.py`` (dery-method.md §5) on an ``Instance``, with the linear surrogate as the score.

    Per trial: shuffle all blocks; a block whose stage slot and set are both free is placed (transition rule
    checked, no score); otherwise the block replaces its stage slot's block, and the candidate is scored when every
    slot is filled and the budget holds; it is kept if the score improves and the transitions are valid (as their
    ``check_valid``, which ignores the one-block-per-set rule). Returns the distinct candidates that satisfy all of
    dery's constraints with their scores, the number of scored candidates, and how many broke the set rule.
    """
    rng = np.random.default_rng(seed)
    k = inst.k
    found: dict[tuple, float] = {}
    evals = broke_sets = 0

    def transitions_ok(sel: list) -> bool:
        filled = [(s, b) for s, b in enumerate(sel) if b is not None]
        return all(allowed(a, b, forbid) for (i, a), (j, b) in zip(filled, filled[1:], strict=False) if j == i + 1)

    for _ in range(trials):
        select: list[dict[str, Any] | None] = [None] * k
        best = -np.inf
        for i in rng.permutation(len(inst.blocks)):
            b = inst.blocks[int(i)]
            s = b["stage"]
            if select[s] is None and b["set"] not in {x["set"] for x in select if x is not None}:
                trial = list(select)
                trial[s] = b
                if transitions_ok(trial):
                    select = trial
                continue
            new = list(select)
            new[s] = b
            if any(x is None for x in new):
                continue
            p, m = inst.totals(new)
            if p > max_params or m > max_macs:
                continue
            evals += 1
            score = sum(x["score"] for x in new)
            one_per_set = len({x["set"] for x in new}) == k
            broke_sets += not one_per_set
            if one_per_set and transitions_ok(new):
                found[tuple((x["model"], x["stage"]) for x in new)] = score
            if score > best and transitions_ok(new):
                select, best = new, score
    return found, evals, broke_sets
