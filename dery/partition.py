"""Cover-set partition (paper Eqs. 2-7): cut every model into K contiguous blocks and group
all blocks into K equivalence sets around anchors.

Notation. Model m has N_m nodes; feature index 0 is its stem output, index i its node i.
A block (m, k, s, e) is stage k of model m covering nodes s..e (1-based, inclusive);
its input is feature s-1 and its output feature e. Block similarity is the paper's
S(B, B') = CKA(input, input') + CKA(output, output') (in [0, 2]).

Solver (as the paper describes it, with the authors' code bugs fixed):
- per-model size bound |B| <= floor((1+eps) N_m / K) (their code used one global bound
  taken from the last model, applied to the donor block);
- cross-stage similarity is real (their code forced it to 0 by a typo), so stage-aligned
  sets must *emerge*;
- anchors are (model, stage) references re-resolved after every boundary move, and
  re-picked as set medoids (their code carried stale blocks from earlier partitions);
- Kernighan-Lin style single-node boundary moves (Eqs. 6-7) alternate with assignment
  to the most similar anchor and medoid re-anchoring, from R seeded random starts.
Objective: sum over blocks of S(block, anchor of its set); the best restart is kept.

One decision the paper leaves open (dery-method.md §12.5): by default every model puts its
K blocks into K *distinct* sets (each set then holds one block of every model). Without it
(``one_per_model: false``, the authors' behaviour) a hub anchor can absorb most blocks: on
the embedded default, transformer-like models with a strong residual stream joined one set
with all their stages, leaving too few sets to assemble from. The constraint does not fix a
block's set by its stage index, so stage alignment still has to emerge.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


class PartitionError(ValueError):
    pass


@dataclass(frozen=True)
class Block:
    model: str
    stage: int
    start: int  # first node, 1-based
    end: int    # last node, inclusive

    @property
    def size(self) -> int:
        return self.end - self.start + 1


class Similarity:
    """Look-up of node CKA between any two models, from per-pair matrices."""

    def __init__(self, pairs: dict[tuple[str, str], np.ndarray]):
        self.pairs = dict(pairs)
        for (a, b), m in list(pairs.items()):
            self.pairs.setdefault((b, a), m.T)

    def node(self, a: str, i: int, b: str, j: int) -> float:
        return float(self.pairs[(a, b)][i, j])

    def block(self, x: Block, y: Block) -> float:
        m = self.pairs[(x.model, y.model)]
        return float(m[x.start - 1, y.start - 1] + m[x.end, y.end])


def size_bound(n_nodes: int, k: int, eps: float) -> int:
    return max(int(np.floor((1 + eps) * n_nodes / k)), -(-n_nodes // k))


def blocks_from_cuts(model: str, cuts: list[int], n_nodes: int) -> list[Block]:
    """cuts = first node of stages 1..K-1."""
    starts = [1] + list(cuts)
    ends = [c - 1 for c in cuts] + [n_nodes]
    return [Block(model, k, s, e) for k, (s, e) in enumerate(zip(starts, ends))]


def _assign(blocks: dict[str, list[Block]], anchors: list[Block], sim: Similarity,
            one_per_model: bool) -> dict[tuple[str, int], int]:
    """Set label of every (model, stage). With ``one_per_model`` each model's K blocks go to K
    distinct sets (a K x K assignment problem per model); otherwise each block simply joins
    its most similar anchor, as in the authors' code."""
    from scipy.optimize import linear_sum_assignment

    labels = {}
    for m, bs in blocks.items():
        score = np.array([[sim.block(b, a) + (1e6 if b == a else 0.0) for a in anchors] for b in bs])  # anchors stay home
        if one_per_model:
            rows, cols = linear_sum_assignment(-score)
            labels.update({(m, int(r)): int(c) for r, c in zip(rows, cols)})
        else:
            labels.update({(m, s): int(np.argmax(score[s])) for s in range(len(bs))})
    return labels


def _random_cuts(rng: np.random.Generator, n: int, k: int, bound: int) -> list[int]:
    for _ in range(10_000):
        cuts = sorted(rng.choice(np.arange(2, n + 1), size=k - 1, replace=False).tolist())
        sizes = np.diff([1] + cuts + [n + 1])
        if sizes.max() <= bound:
            return cuts
    # a tight bound: even cuts always satisfy it
    return [1 + round(i * n / k) for i in range(1, k)]


@dataclass
class Result:
    blocks: list[Block]
    set_of: dict[Block, int]
    anchors: list[Block]
    objective: float
    restart: int

    def to_json(self) -> dict:
        sets = [[asdict(b) for b in self.blocks if self.set_of[b] == j] for j in range(len(self.anchors))]
        return {"objective": self.objective, "best_restart": self.restart,
                "anchors": [asdict(a) for a in self.anchors], "sets": sets,
                "blocks": [dict(asdict(b), set=self.set_of[b]) for b in self.blocks]}


def _solve_once(sim: Similarity, n_nodes: dict[str, int], k: int, eps: float, iters: int,
                rng: np.random.Generator, one_per_model: bool) -> tuple[dict[str, list[int]], list[tuple[str, int]], float]:
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
        # boundary moves (Eqs. 6-7): for each boundary keep the best of {stay, -1, +1}
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
        # re-anchor: the medoid of each set; an emptied set takes the block worst served by its anchor
        for j in range(k):
            members = [r for r, lab in labels.items() if lab == j]
            if not members:
                worst = min(labels, key=lambda r: sim.block(blocks[r[0]][r[1]], anchor_block(labels[r])))
                labels[worst] = j
                members = [worst]
            scores = [sum(sim.block(blocks[a[0]][a[1]], blocks[c[0]][c[1]]) for c in members if c != a) for a in members]
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
    """Best of ``restarts`` seeded runs; sets are numbered by the mean relative depth of their members."""
    too_short = {m: n for m, n in n_nodes.items() if n < k}
    if too_short:
        raise PartitionError(f"K = {k} is larger than the node count of {too_short}; lower `partition.K` "
                             f"to at most {min(n_nodes.values())}.")
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
    depth = [np.mean([(b.start + b.end) / 2 / n_nodes[b.model] for b in blocks if raw[b] == j] or [j]) for j in range(k)]
    order = np.argsort(depth, kind="stable")
    rename = {int(old): new for new, old in enumerate(order)}
    return Result(blocks, {b: rename[raw[b]] for b in blocks}, [anchor_blocks[int(o)] for o in order], obj, r)


def stage_alignment(result: Result) -> float:
    """Fraction of blocks whose set index equals their stage index (1.0 = perfectly stage-aligned)."""
    return float(np.mean([result.set_of[b] == b.stage for b in result.blocks]))
