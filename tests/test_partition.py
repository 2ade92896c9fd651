"""Cover-set partition on hand-built similarity structures where the best answer is known."""
import numpy as np
import pytest

from dery.partition import (
    Block,
    PartitionError,
    Similarity,
    partition,
    size_bound,
    stage_alignment,
)


def staged_similarity(stage_of: dict[str, list[int]], sharpness: float = 3.0):
    """Smooth synthetic CKA from a planted depth: node i of latent stage s at position p of L
    has depth s + (p + 1) / L, so stage ends sit at integer depths shared by every model and the
    stem at 0. CKA = exp(-sharpness * |depth difference|). Blocks from stage end to stage end
    reach the maximum similarity 2 with each other, so the planted cuts are the unique optimum
    (the stage lengths below share no fractional depth across all models).
    """
    def depths(stages):
        d = [0.0]
        for i, st in enumerate(stages):
            length = stages.count(st)
            d.append(st + (i - stages.index(st) + 1) / length)
        return np.array(d)

    dep = {m: depths(s) for m, s in stage_of.items()}
    return {(a, b): np.exp(-sharpness * np.abs(dep[a][:, None] - dep[b][None, :])) for a in dep for b in dep}


STAGES = {"m1": [0, 0, 0, 1, 1, 1, 2, 2, 2], "m2": [0, 0, 1, 1, 1, 1, 2, 2], "m3": [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]}


def test_recovers_the_planted_stage_boundaries_and_stage_aligned_sets():
    pairs = staged_similarity(STAGES)
    res = partition(pairs, {m: len(s) for m, s in STAGES.items()}, k=3, eps=1.0, restarts=20, iters=50, seed=0)
    for m, labels in STAGES.items():
        cuts = [b.start for b in res.blocks if b.model == m and b.stage > 0]
        want = [i + 1 for i in range(1, len(labels)) if labels[i] != labels[i - 1]]
        assert cuts == want, m
    assert stage_alignment(res) == 1.0
    assert sorted(res.set_of[b] for b in res.blocks if b.model == "m2") == [0, 1, 2]


def test_size_bound_is_enforced_per_model():
    # m_big's natural first stage (6 of 9 nodes) is longer than (1+eps) * 9 / 3 = 3.6 -> 3
    stages = {"m_big": [0] * 6 + [1, 2, 2], "m_small": [0, 1, 2]}
    res = partition(staged_similarity(stages), {m: len(s) for m, s in stages.items()}, k=3, eps=0.2, restarts=5,
                    iters=30, seed=1)
    for b in res.blocks:
        assert 1 <= b.size <= size_bound(len(stages[b.model]), 3, 0.2)


def test_same_seed_same_partition_and_a_different_seed_still_valid():
    pairs = staged_similarity(STAGES)
    n = {m: len(s) for m, s in STAGES.items()}
    a = partition(pairs, n, 3, 0.5, 5, 30, seed=7)
    b = partition(pairs, n, 3, 0.5, 5, 30, seed=7)
    assert a.to_json() == b.to_json()
    c = partition(pairs, n, 3, 0.5, 5, 30, seed=8)
    assert {m: sum(x.size for x in c.blocks if x.model == m) for m in n} == n  # blocks cover every model


def test_block_similarity_is_input_plus_output_cka():
    pairs = {("a", "b"): np.arange(20.0).reshape(4, 5) / 20}
    sim = Similarity(pairs)
    x, y = Block("a", 1, 2, 3), Block("b", 1, 3, 4)
    # input = output of the node before the block (index start-1), output = last node
    assert sim.block(x, y) == pytest.approx(pairs[("a", "b")][1, 2] + pairs[("a", "b")][3, 4])
    assert sim.block(y, x) == pytest.approx(sim.block(x, y))


def test_k_larger_than_a_model_is_a_clear_error():
    with pytest.raises(PartitionError, match="lower `partition.K`"):
        partition(staged_similarity({"a": [0, 1], "b": [0, 1, 2]}), {"a": 2, "b": 3}, 3, 0.2, 1, 5, 0)


def test_each_model_puts_its_blocks_into_distinct_sets_by_default():
    pairs = staged_similarity(STAGES)
    n = {m: len(s) for m, s in STAGES.items()}
    res = partition(pairs, n, 3, 0.5, 5, 30, seed=2)
    for m in n:
        assert sorted(res.set_of[b] for b in res.blocks if b.model == m) == [0, 1, 2]


def test_without_the_one_per_model_rule_each_block_joins_its_most_similar_anchor():
    pairs = staged_similarity(STAGES)
    n = {m: len(s) for m, s in STAGES.items()}
    res = partition(pairs, n, 3, 0.5, 5, 30, seed=3, one_per_model=False)
    sim = Similarity(pairs)
    for b in res.blocks:
        best = max(sim.block(b, a) for a in res.anchors)
        assert sim.block(b, res.anchors[res.set_of[b]]) == pytest.approx(best)


# --- the vectorised solver against the one-restart-at-a-time implementation it replaced ------------------------

def _reference():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import reference

    return reference


def _random_pairs(rng, n, kind):
    names = sorted(n)
    if kind == "smooth":
        depth = {a: np.sort(np.concatenate([[0.0], rng.uniform(0, 1, n[a])])) for a in names}
        return {(a, b): np.exp(-3 * np.abs(depth[a][:, None] - depth[b][None])) for i, a in enumerate(names)
                for b in names[i:]}
    if kind == "ties":  # quantised: many exactly equal scores, so tie-breaking must match too
        return {(a, b): rng.integers(0, 3, (n[a] + 1, n[b] + 1)) / 2 for i, a in enumerate(names) for b in names[i:]}
    dtype = np.float32 if kind == "float32" else np.float64
    return {(a, b): rng.uniform(0, 1, (n[a] + 1, n[b] + 1)).astype(dtype) for a in names for b in names}


@pytest.mark.parametrize("kind", ["smooth", "noise", "ties", "float32"])
def test_vectorised_solver_returns_the_reference_partition_exactly(kind):
    ref = _reference()
    rng = np.random.default_rng(["smooth", "noise", "ties", "float32"].index(kind))
    for trial in range(6):
        k = int(rng.integers(2, 5))
        n = {f"m{i}": int(rng.integers(k, 3 * k + 5)) for i in range(int(rng.integers(1, 6)))}
        args = (_random_pairs(rng, n, kind), n, k, float(rng.choice([0.0, 0.2, 1.0])), int(rng.integers(1, 8)),
                int(rng.integers(1, 25)), int(rng.integers(0, 100)), bool(trial % 2))
        want, got = ref.partition(*args), partition(*args)
        assert got.to_json() == want.to_json() and got.objective == want.objective, (kind, trial)


def test_bulk_replay_of_the_random_starts_matches_numpys_generator():
    from dery.random_starts import initial_state_rng, initial_states_replay, replay_matches_numpy

    assert replay_matches_numpy()
    n, k = [8, 16, 12, 33, 14, 27], 4
    bounds = [size_bound(x, k, 0.2) for x in n]
    seeds = [[3, r] for r in range(20)]
    assert initial_states_replay(seeds, n, k, bounds) == [initial_state_rng(s, n, k, bounds) for s in seeds]
