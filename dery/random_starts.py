"""Random starts of the partition: each restart's cuts of every model and its K anchors, drawn from a seeded PCG64.

Split from ``dery.partition`` because it is one idea of its own: a bulk replay of numpy's draws that gives the
same starts ~100x faster. ``initial_states`` is the only entry point the solver needs.
"""
from __future__ import annotations

import functools
import sys

import numpy as np


def random_cuts(rng: np.random.Generator, n: int, k: int, bound: int) -> list[int]:
    """K-1 cut points of an n-node model, uniform among cuttings whose blocks all fit ``bound`` (by rejection)."""
    for _ in range(10_000):
        cuts = sorted(rng.choice(np.arange(2, n + 1), size=k - 1, replace=False).tolist())
        sizes = np.diff([1] + cuts + [n + 1])
        if sizes.max() <= bound:
            return cuts
    # a tight bound: even cuts always satisfy it
    return [1 + round(i * n / k) for i in range(1, k)]


# A restart draws each model's cuts by rejection (``rng.choice`` of K-1 cut points until every block
# fits the size bound: ~455 draws for a 16-node model at K=4, eps=0.2, ~4,700 per restart for the paper's zoo) and
# then K anchors. At microseconds of Python overhead per ``rng.choice`` call that alone took longer than the whole
# solve, so the draws are replayed in bulk, for all restarts at once, from the same PCG64 streams:
# ``Generator.choice(pop, size, replace=False)`` is Floyd's algorithm followed by a Fisher-Yates shuffle, each step
# one Lemire bounded draw from the next 32-bit word (the low half of a 64-bit output, then its high half). A restart
# that meets a draw Lemire's method would reject, or a numpy whose choice() no longer matches this replay (checked
# once per process), is drawn with the real Generator instead.

_WORD = 1 << 32
_MAX_TRIES = 10_000   # as random_cuts


def _lemire(x: np.ndarray, high: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounded draws in [0, high] from 32-bit words x (uint64); second value: would numpy reject (redraw) it."""
    m = x * np.uint64(high + 1)
    return m >> np.uint64(32), (m & np.uint64(_WORD - 1)) < np.uint64(_WORD % (high + 1))


class _Words:
    """The 32-bit words a fresh ``np.random.default_rng(seed)`` consumes for bounded integers below 2**32."""

    def __init__(self, seed):
        self._bits = np.random.PCG64(seed)
        self._buf = np.empty(0, np.uint64)
        self.pos = 0

    def peek(self, count: int) -> np.ndarray:
        short = self.pos + count - len(self._buf)
        if short > 0:
            raw = self._bits.random_raw(max(short, len(self._buf), 8192) // 2 + 1)
            words = raw.astype("<u8").view("<u4").astype(np.uint64)             # low half first
            self._buf = np.concatenate([self._buf[self.pos:], words])
            self.pos = 0
        return self._buf[self.pos: self.pos + count]


def _choice_plan(pop: int, size: int) -> tuple[list[int], int]:
    """Floyd's j values (pop - size .. pop - 1) and the number of words one choice() consumes."""
    floyd = list(range(pop - size, pop))
    return floyd, sum(j > 0 for j in floyd) + max(size - 1, 0)


def _replay_cuts(words: list[_Words], n: int, k: int, bound: int, ok: np.ndarray) -> np.ndarray:
    """``random_cuts`` replayed on every stream (one per restart) at once: [R, K-1] cuts, each stream advanced by
    exactly the words the real call consumes. ``ok`` (in/out): False for streams that met a would-be rejection."""
    s, pop = k - 1, n - 1
    floyd, width = _choice_plan(pop, s)
    out = np.zeros((len(words), s), np.int64)
    if s == 0:                               # K = 1: no cut to draw, no word consumed
        return out
    todo, tries, block = np.flatnonzero(ok), 0, 256
    while len(todo) and tries < _MAX_TRIES:
        count = min(block, _MAX_TRIES - tries)
        u = np.stack([words[i].peek(count * width) for i in todo]).reshape(len(todo), count, width)
        col, chosen, rejected = 0, [], np.zeros((len(todo), count), bool)
        for j in floyd:
            if j == 0:                       # numpy returns 0 without drawing
                val = np.zeros((len(todo), count), np.uint64)
            else:
                val, rej = _lemire(u[..., col], j)
                rejected |= rej
                col += 1
            dup = np.zeros(val.shape, bool)
            for c in chosen:
                dup |= val == c
            chosen.append(np.where(dup, np.uint64(j), val))
        for i in range(s - 1, 0, -1):        # the shuffle's draws: sorting undoes its effect, not its consumption
            rejected |= _lemire(u[..., col], i)[1]
            col += 1
        cuts = np.sort(np.stack(chosen, axis=-1).astype(np.int64), axis=-1) + 2
        edges = np.concatenate([np.ones(cuts.shape[:2] + (1,), np.int64), cuts,
                                np.full(cuts.shape[:2] + (1,), n + 1)], axis=-1)
        fits = (edges[..., 1:] - edges[..., :-1]).max(axis=-1) <= bound         # [todo, count]
        hit = fits.any(axis=1)
        first = np.where(hit, fits.argmax(axis=1), count - 1)
        bad = (np.cumsum(rejected, axis=1)[np.arange(len(todo)), first] > 0)
        ok[todo[bad]] = False
        for i, f in zip(todo.tolist(), first.tolist(), strict=True):
            words[i].pos += (f + 1) * width
        out[todo[hit]] = cuts[hit, first[hit]]
        todo = todo[~hit & ~bad]
        tries += count
        block = min(block * 4, 4096)
    out[todo] = [1 + round(i * n / k) for i in range(1, k)]   # no draw fitted in 10,000 tries: even cuts
    return out


def _replay_choice(words: _Words, pop: int, size: int) -> list[int] | None:
    """``rng.choice(pop, size, replace=False)`` replayed (order included); None where numpy would differ."""
    if pop > 10_000:                          # numpy switches to a tail shuffle there
        return None
    floyd, width = _choice_plan(pop, size)
    u = iter(words.peek(width).tolist())
    chosen: list[int] = []
    for j in floyd:
        val = 0
        if j:
            x, rej = _lemire(np.uint64(next(u)), j)
            if rej:
                return None
            val = int(x)
        chosen.append(j if val in chosen else val)
    for i in range(size - 1, 0, -1):
        x, rej = _lemire(np.uint64(next(u)), i)
        if rej:
            return None
        jj = int(x)
        chosen[jj], chosen[i] = chosen[i], chosen[jj]
    words.pos += width
    return chosen


def initial_state_rng(seed, n: list[int], k: int, bounds: list[int]) -> tuple[list[list[int]], list[int]]:
    """The random start drawn with numpy's own Generator (the definition the replay reproduces)."""
    rng = np.random.default_rng(seed)
    cuts = [random_cuts(rng, nn, k, b) for nn, b in zip(n, bounds, strict=False)]
    return cuts, [int(a) for a in rng.choice(len(n) * k, size=k, replace=False)]


def initial_states_replay(seeds: list, n: list[int], k: int, bounds: list[int]) -> list:
    """Random starts of every seed; None for a seed whose replay could differ from numpy."""
    words = [_Words(seed) for seed in seeds]
    ok = np.ones(len(seeds), bool)
    cuts = np.stack([_replay_cuts(words, nn, k, b, ok) for nn, b in zip(n, bounds, strict=False)],
                    axis=1)   # [R, M, K-1]
    out = []
    for i, w in enumerate(words):
        anchors = _replay_choice(w, len(n) * k, k) if ok[i] else None
        out.append(None if anchors is None else (cuts[i].tolist(), anchors))
    return out


@functools.lru_cache(maxsize=1)
def replay_matches_numpy() -> bool:
    """Once per process: the replay must give numpy's own draws (tight and loose bounds, several K)."""
    if sys.byteorder != "little":
        return False
    cases = [([8, 16, 12, 33, 5], 4, [2, 4, 3, 9, 2]), ([9, 4, 7], 3, [4, 2, 7]), ([6, 2, 3], 2, [6, 2, 2]),
             ([4, 4], 4, [1, 1]), ([30, 11], 5, [8, 3]), ([5], 1, [5])]
    seeds = [[7, r] for r in range(3)]
    try:
        return all(initial_states_replay(seeds, n, k, b) == [initial_state_rng(s, n, k, b) for s in seeds]
                   for n, k, b in cases)
    except Exception:
        return False


def initial_states(seeds: list, n: list[int], k: int, bounds: list[int]) -> list[tuple[list[list[int]], list[int]]]:
    """Per seed: the cuts of every model and the K anchor references (model index * K + stage)."""
    got = initial_states_replay(seeds, n, k, bounds) if replay_matches_numpy() else [None] * len(seeds)
    return [g if g is not None else initial_state_rng(s, n, k, bounds) for s, g in zip(seeds, got, strict=True)]
