"""The 0-1 program on SCIP against brute-force enumeration, and its budget errors."""
import math

import numpy as np
import pytest

from dery.reassembly import (
    BudgetError,
    Instance,
    brute_force,
    enumerate_assemblies,
    key,
    pair_key,
)


def random_instance(seed=0, models=("a", "b", "c", "d"), k=3, aligned=False):
    rng = np.random.default_rng(seed)
    blocks = []
    for m in models:
        sets = list(range(k)) if aligned else list(rng.permutation(k))
        fmt = "NLC" if m == "d" else "NCHW"
        for s in range(k):
            blocks.append(dict(model=m, stage=s, start=s + 1, end=s + 1, set=int(sets[s]),
                               params=int(rng.integers(1, 100)) * 1000, macs=int(rng.integers(1, 100)) * 10000,
                               score=float(rng.uniform(0, 2)), fmt_in=fmt, fmt_out=fmt))
    pairs, stem, head = {}, {}, {}
    for a in blocks:
        for b in blocks:
            if b["stage"] == a["stage"] + 1:
                same = a["model"] == b["model"]
                pairs[pair_key(a, b)] = {"params": 0 if same else int(rng.integers(1, 30)) * 1000,
                                         "macs": 0 if same else int(rng.integers(1, 30)) * 10000}
        if a["stage"] == 0:
            stem[key(a)] = {"params": 500, "macs": 20000}
        if a["stage"] == k - 1:
            head[key(a)] = {"params": 1000, "macs": 1000}
    return Instance(blocks, pairs, stem, head, k)


def ids(assembly_blocks):
    return tuple((b["model"], b["stage"]) for b in assembly_blocks)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_enumeration_finds_exactly_the_brute_force_feasible_set(seed):
    inst = random_instance(seed)
    budget_p, budget_m = 160_000, 1_500_000
    forbid = [["tokens", "maps"]]
    oracle = {ids(c): (p, m, s) for c, p, m, s in brute_force(inst, budget_p, budget_m, forbid)}
    assert oracle, "the instance should have feasible assemblies"
    got = enumerate_assemblies(inst, budget_p, budget_m, n=10_000, forbid=forbid, seed=0)
    assert {ids(c["blocks"]) for c in got} == set(oracle)
    for c in got:  # reported costs are the exact totals
        assert (c["params"], c["macs"]) == oracle[ids(c["blocks"])][:2]
    surrogate = [c["surrogate"] for c in got]
    assert all(x >= y - 1e-9 for x, y in zip(surrogate, surrogate[1:])), "best surrogate first"
    assert surrogate[0] == pytest.approx(max(s for _, _, s in oracle.values()))


def test_top_n_is_a_prefix_of_the_full_enumeration_and_deterministic():
    inst = random_instance(3)
    full = enumerate_assemblies(inst, 1e9, 1e12, n=1000, seed=0)
    top = enumerate_assemblies(inst, 1e9, 1e12, n=5, seed=0)
    assert [c["surrogate"] for c in top] == pytest.approx([c["surrogate"] for c in full[:5]])
    assert top == enumerate_assemblies(inst, 1e9, 1e12, n=5, seed=0)


def test_every_assembly_takes_one_block_per_set_and_per_stage_in_stage_order():
    inst = random_instance(4)
    for c in enumerate_assemblies(inst, 1e9, 1e12, n=50):
        assert [b["stage"] for b in c["blocks"]] == list(range(inst.k))
        assert sorted(b["set"] for b in c["blocks"]) == list(range(inst.k))


def test_transformer_to_cnn_transitions_are_forbidden_as_in_the_paper():
    inst = random_instance(5)
    for c in enumerate_assemblies(inst, 1e9, 1e12, n=1000, forbid=[["tokens", "maps"]]):
        fmts = [("d" == b["model"]) for b in c["blocks"]]
        assert fmts == sorted(fmts), "once tokens, always tokens"


def test_an_infeasible_budget_names_the_smallest_feasible_one():
    inst = random_instance(6)
    smallest = min(p for _, p, _, _ in brute_force(inst, math.inf, math.inf))
    with pytest.raises(BudgetError) as err:
        enumerate_assemblies(inst, 1000, 1e12, n=5, budget_name="tiny")
    msg = str(err.value)
    assert "tiny" in msg and f"{smallest / 1e6:.3f}M params" in msg and "Raise" in msg


def test_non_finite_coefficients_never_reach_scip():
    inst = random_instance(7)
    inst.blocks[0]["score"] = float("-inf")
    with pytest.raises(ValueError, match="non-finite"):
        enumerate_assemblies(inst, 1e9, 1e12, n=1)
