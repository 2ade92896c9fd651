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

import itertools
from dataclasses import asdict, dataclass

import numpy as np

from . import random_starts as RS


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
    return [Block(model, k, s, e) for k, (s, e) in enumerate(zip(starts, ends, strict=True))]


def _assign(blocks: dict[str, list[Block]], anchors: list[Block], sim: Similarity,
            one_per_model: bool) -> dict[tuple[str, int], int]:
    """Set label of every (model, stage). With ``one_per_model`` each model's K blocks go to K
    distinct sets (a K x K assignment problem per model); otherwise each block simply joins
    its most similar anchor, as in the authors' code."""
    from scipy.optimize import linear_sum_assignment

    labels = {}
    for m, bs in blocks.items():
        # anchors stay home
        score = np.array([[sim.block(b, a) + (1e6 if b == a else 0.0) for a in anchors] for b in bs])
        if one_per_model:
            rows, cols = linear_sum_assignment(-score)
            labels.update({(m, int(r)): int(c) for r, c in zip(rows, cols, strict=True)})
        else:
            labels.update({(m, s): int(np.argmax(score[s])) for s in range(len(bs))})
    return labels


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


# ----------------------------------------------------------------------------------------------------------------
# Batched solver. All R restarts run in lockstep on numpy arrays (restart = leading axis); every float is
# computed with the same operations in the same order as the one-restart-at-a-time version kept in
# benchmarks/reference.py, so the partition is bit-for-bit the same, only ~two orders of magnitude faster:
# - block similarities are gathers from one padded [M, M, L, L] table instead of Python calls;
# - the K x K assignment per model is a max over the K! permutations (K <= 6); an optimum that is not
#   unique by a clear margin (or a non-finite score) goes to scipy exactly as before, so ties break the same;
# - sums that the reference builds with Python's ``sum`` are accumulated left to right here too;
# - a restart that reaches a fixed point stops, as before (an iteration is a function of its state alone).

_NO_MOVE_MARGIN = 1e-12   # a boundary move must beat the incumbent by this (as in the paper's greedy step)
_ANCHOR_BONUS = 1e6       # an anchor stays in its own set
_MAX_BRUTE_K = 6          # 720 permutations; beyond it scipy solves each assignment


@dataclass
class _Tables:
    """Node CKA of every ordered model pair, padded into one array, for vectorised block look-ups."""

    models: list[str]
    n: np.ndarray                                   # [M] node counts
    flat: np.ndarray                                # [M * M * L * L] float64
    side: int                                       # L = max nodes + 2
    narrow: list[tuple[np.dtype, np.ndarray]]       # (dtype, pair mask [M, M]): sums that round to a narrower float

    @staticmethod
    def build(sim: Similarity, n_nodes: dict[str, int]) -> _Tables:
        models = sorted(n_nodes)
        m, side = len(models), max(n_nodes.values()) + 2   # +1 stem, +1 so a trial edge past the end stays inside
        table = np.zeros((m, m, side, side))
        dtypes: dict[np.dtype, np.ndarray] = {}
        for a, ma in enumerate(models):
            for b, mb in enumerate(models):
                arr = np.asarray(sim.pairs[(ma, mb)])
                rows, cols = n_nodes[ma] + 1, n_nodes[mb] + 1
                if arr.shape[0] < rows or arr.shape[1] < cols:
                    raise PartitionError(f"similarity of {ma} vs {mb} is {arr.shape}, smaller than the node counts "
                                         f"({rows} x {cols} with the stem)")
                table[a, b, :rows, :cols] = arr[:rows, :cols]
                # the reference adds two entries in the array's own dtype: float32 pairs round to float32
                # (rounding the exact float64 sum once more gives the same value: 53 >= 2 * 24 + 2 bits)
                dt = np.result_type(arr.dtype)
                if np.issubdtype(dt, np.floating) and dt.itemsize < 8:
                    dtypes.setdefault(dt, np.zeros((m, m), bool))[a, b] = True
        return _Tables(models, np.array([n_nodes[x] for x in models]), table.ravel(), side, list(dtypes.items()))

    def block(self, ma, mb, sa, ea, sb, eb) -> np.ndarray:
        """S(B, B') = CKA(inputs) + CKA(outputs) for blocks (ma, sa..ea) and (mb, sb..eb), broadcast."""
        m, side = len(self.models), self.side
        base = (np.asarray(ma) * m + mb) * (side * side)
        v = self.flat.take(base + (sa - 1) * side + (sb - 1)) + self.flat.take(base + ea * side + eb)
        for dt, mask in self.narrow:
            v = np.where(mask[ma, mb], v.astype(dt).astype(np.float64), v)
        return v


def _seqsum(v: np.ndarray, axis: int = -1) -> np.ndarray:
    """Left-to-right sum (as Python's ``sum``), not numpy's pairwise one: the same float as the reference."""
    v = np.moveaxis(v, axis, 0)
    total = v[0]
    for x in v[1:]:
        total = total + x
    return total


class _State:
    """Cut edges E[r, m, 0..K] (E[.., 0] = 1, E[.., K] = N + 1), anchors A[r, j] = model * K + stage,
    labels Lab[r, m, s] (set of block s of model m), for a batch of restarts."""

    def __init__(self, edges: np.ndarray, anchors: np.ndarray):
        self.E, self.A = edges, anchors
        self.Lab = np.zeros(edges.shape[:2] + (edges.shape[2] - 1,), dtype=np.int64)

    def take(self, idx: np.ndarray) -> _State:
        s = _State(self.E[idx], self.A[idx])
        s.Lab = self.Lab[idx]
        return s

    def put(self, idx: np.ndarray, other: _State) -> None:
        self.E[idx], self.A[idx], self.Lab[idx] = other.E, other.A, other.Lab


def _anchor_blocks(st: _State, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model, start and end of every anchor: [R, K] each."""
    am, at = st.A // k, st.A % k
    r = np.arange(len(st.A))[:, None]
    return am, st.E[r, am, at], st.E[r, am, at + 1] - 1


def _assign_batch(st: _State, t: _Tables, k: int, one_per_model: bool, perms: np.ndarray | None) -> np.ndarray:
    """Labels [R, M, K], as ``_assign`` on every restart."""
    from scipy.optimize import linear_sum_assignment

    n_r, m = st.E.shape[:2]
    am, a_start, a_end = _anchor_blocks(st, k)
    mi = np.arange(m)[None, :, None, None]
    starts, ends = st.E[:, :, :k, None], st.E[:, :, 1:, None] - 1          # [R, M, K, 1]
    score = t.block(mi, am[:, None, None, :], starts, ends, a_start[:, None, None, :], a_end[:, None, None, :])
    refs = (np.arange(m)[:, None] * k + np.arange(k)[None, :])[None, :, :, None]
    score = score + np.where(refs == st.A[:, None, None, :], _ANCHOR_BONUS, 0.0)   # [R, M, K(block), K(anchor)]
    if not one_per_model:
        return np.argmax(score, axis=-1)
    labels = np.zeros((n_r, m, k), dtype=np.int64)
    finite = np.isfinite(score).all(axis=(2, 3))
    if perms is not None:
        totals = score[:, :, 0, perms[:, 0]]                                    # [R, M, K!], summed left to right
        for s in range(1, k):
            totals = totals + score[:, :, s, perms[:, s]]
        best = np.argmax(totals, axis=-1)
        labels = perms[best]
        if perms.shape[0] > 1:
            top2 = -np.partition(-totals, 1, axis=-1)[..., :2]
            # a unique optimum by more than float noise is what scipy returns too; anything closer goes to scipy
            unclear = top2[..., 0] - top2[..., 1] <= 1e-6 + 1e-12 * np.abs(top2[..., 0])
        else:
            unclear = np.zeros((n_r, m), bool)
        todo = np.argwhere(unclear | ~finite)
    else:
        todo = np.argwhere(np.ones((n_r, m), bool))
    for r, j in todo:
        _, cols = linear_sum_assignment(-score[r, j])
        labels[r, j] = cols
    return labels


def _boundary_moves(st: _State, t: _Tables, k: int, bounds: np.ndarray) -> None:
    """Eqs. 6-7 for every model and boundary in turn, in place: keep the best of {stay, -1, +1}."""
    n_r, m = st.E.shape[:2]
    r1, r3, d3 = np.arange(n_r)[:, None], np.arange(n_r)[:, None, None], np.arange(3)[None, :, None]
    shift = np.zeros((k - 1, 3, k + 1), dtype=np.int64)
    for b in range(k - 1):
        shift[b, :, b + 1] = (0, -1, 1)                                          # tried in this order, as before
    for mm in range(m):
        aref = st.A[r1, st.Lab[:, mm, :]]                                        # anchor of each block's set [R, K]
        am, at = aref // k, aref % k
        own = (am == mm)[:, None, :]
        # anchors in other models stay put while this model moves; one in this model moves with the trial
        other_s, other_e = st.E[r1, am, at][:, None, :], (st.E[r1, am, at + 1] - 1)[:, None, :]
        at3, am3 = at[:, None, :], am[:, None, :]
        for b in range(k - 1):
            trial = st.E[:, mm, None, :] + shift[b]                              # [R, 3, K + 1]
            sizes = trial[:, :, 1:] - trial[:, :, :-1]
            valid = ((sizes >= 1) & (sizes <= bounds[mm])).all(axis=2)
            starts, ends = trial[:, :, :k], trial[:, :, 1:] - 1
            a_start = np.where(own, starts[r3, d3, at3], other_s)
            a_end = np.where(own, ends[r3, d3, at3], other_e)
            val = _seqsum(t.block(mm, am3, starts, ends, a_start, a_end), axis=2)   # [R, 3]
            pick = np.zeros(n_r, dtype=np.int64)
            best = val[:, 0].copy()
            have = valid[:, 0].copy()
            for d in (1, 2):
                take = valid[:, d] & (~have | (val[:, d] > best + _NO_MOVE_MARGIN))
                pick = np.where(take, d, pick)
                best = np.where(take, val[:, d], best)
                have |= take
            st.E[:, mm, b + 1] += shift[b, pick, b + 1]


def _reanchor(st: _State, t: _Tables, k: int, one_per_model: bool) -> None:
    """Each set's anchor becomes its medoid (largest summed similarity to the other members), in place."""
    n_r, m = st.E.shape[:2]
    r = np.arange(n_r)[:, None, None]
    if one_per_model:
        # every set holds exactly one block of every model: member of model c in set j is stage inv[r, c, j]
        inv = np.empty_like(st.Lab)
        np.put_along_axis(inv, st.Lab, np.broadcast_to(np.arange(k), st.Lab.shape), axis=2)
        inv = inv.transpose(0, 2, 1)                                             # [R, K(set), M]
        mi = np.arange(m)[None, None, :]
        s, e = st.E[r, mi, inv], st.E[r, mi, inv + 1] - 1                        # [R, K, M]
        sim = t.block(mi[..., None], mi[:, :, None, :], s[..., None], e[..., None], s[:, :, None, :], e[:, :, None, :])
        sim = np.where(np.eye(m, dtype=bool), 0.0, sim)                          # c != a
        best = np.argmax(_seqsum(sim, axis=-1), axis=-1)                         # [R, K], members in model order
        st.A = best * k + np.take_along_axis(inv, best[..., None], axis=2)[..., 0]
        return
    mk = m * k
    flat_m = np.repeat(np.arange(m), k)
    s = st.E[:, :, :k].reshape(n_r, mk)
    e = (st.E[:, :, 1:] - 1).reshape(n_r, mk)
    full = t.block(flat_m[None, :, None], flat_m[None, None, :], s[:, :, None], e[:, :, None], s[:, None, :],
                   e[:, None, :])
    full = np.where(np.eye(mk, dtype=bool), 0.0, full)
    lab = st.Lab.reshape(n_r, mk)                                                # a view: edits reach st.Lab
    for j in range(k):
        members = lab == j
        for rr in np.flatnonzero(~members.any(axis=1)):
            # an emptied set takes the block worst served by its anchor (anchors of earlier sets already moved)
            am, a_s, a_e = _anchor_blocks(st.take(np.array([rr])), k)
            served = t.block(flat_m, am[0, lab[rr]], s[rr], e[rr], a_s[0, lab[rr]], a_e[0, lab[rr]])
            worst = int(np.argmin(served))
            lab[rr, worst] = j
            members[rr, worst] = True
        score = _seqsum(np.where(members[:, None, :], full, 0.0), axis=-1)
        st.A[:, j] = np.argmax(np.where(members, score, -np.inf), axis=1)


def _objective(st: _State, t: _Tables, k: int) -> np.ndarray:
    n_r, m = st.E.shape[:2]
    am, a_s, a_e = _anchor_blocks(st, k)
    r = np.arange(n_r)[:, None, None]
    v = t.block(np.arange(m)[None, :, None], am[r, st.Lab], st.E[:, :, :k], st.E[:, :, 1:] - 1,
                a_s[r, st.Lab], a_e[r, st.Lab])
    return _seqsum(v.reshape(n_r, m * k), axis=-1)


def _solve_batch(sim: Similarity, n_nodes: dict[str, int], k: int, eps: float, iters: int, seeds: list,
                 one_per_model: bool) -> list[tuple[dict[str, list[int]], list[tuple[str, int]], float]]:
    """Every restart of ``seeds`` (one seed sequence each); returns (cuts, anchors, objective) per restart."""
    t = _Tables.build(sim, n_nodes)
    models = t.models
    bounds = np.array([size_bound(n_nodes[m], k, eps) for m in models])
    inits = RS.initial_states(seeds, [n_nodes[m] for m in models], k, [int(b) for b in bounds])
    edges = np.array([[[1] + c + [n_nodes[m] + 1] for m, c in zip(models, cuts, strict=True)] for cuts, _ in inits],
                     dtype=np.int64)
    st = _State(edges, np.array([a for _, a in inits], dtype=np.int64).reshape(len(seeds), k))
    perms = np.array(list(itertools.permutations(range(k))), dtype=np.int64) if k <= _MAX_BRUTE_K else None
    st.Lab = _assign_batch(st, t, k, one_per_model, perms)
    active = np.arange(len(seeds))
    prev: _State | None = None
    for _it in range(iters):
        cur = st.take(active)
        _boundary_moves(cur, t, k, bounds)
        cur.Lab = _assign_batch(cur, t, k, one_per_model, perms)
        _reanchor(cur, t, k, one_per_model)
        cur.Lab = _assign_batch(cur, t, k, one_per_model, perms)
        st.put(active, cur)
        if prev is not None:
            same = ((cur.E == prev.E).all(axis=(1, 2)) & (cur.A == prev.A).all(axis=1)
                    & (cur.Lab == prev.Lab).all(axis=(1, 2)))
            keep = ~same
            active, cur = active[keep], cur.take(np.flatnonzero(keep))
        if not len(active):
            break
        prev = cur
    obj = _objective(st, t, k)
    refs = [(m, s) for m in models for s in range(k)]
    return [({m: st.E[i, j, 1:k].tolist() for j, m in enumerate(models)}, [refs[a] for a in st.A[i].tolist()],
             float(obj[i])) for i in range(len(seeds))]


def partition(pairs: dict[tuple[str, str], np.ndarray], n_nodes: dict[str, int], k: int, eps: float,
              restarts: int, iters: int, seed: int, one_per_model: bool = True) -> Result:
    """Best of ``restarts`` seeded runs; sets are numbered by the mean relative depth of their members."""
    too_short = {m: n for m, n in n_nodes.items() if n < k}
    if too_short:
        raise PartitionError(f"K = {k} is larger than the node count of {too_short}; lower `partition.K` "
                             f"to at most {min(n_nodes.values())}.")
    sim = Similarity(pairs)
    best = None
    runs = _solve_batch(sim, n_nodes, k, eps, iters, [[seed, r] for r in range(restarts)], one_per_model)
    for r, (cuts, anchors, obj) in enumerate(runs):
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


def stage_alignment(result: Result) -> float:
    """Fraction of blocks whose set index equals their stage index (1.0 = perfectly stage-aligned)."""
    return float(np.mean([result.set_of[b] == b.stage for b in result.blocks]))
