"""Both enumerators (best-first walk, SCIP with no-good cuts) against brute-force enumeration, the SCIP
optimum, and the budget errors."""
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
    solve_optimal,
)

METHODS = ["best_first", "scip"]


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


@pytest.mark.parametrize("keep_single", [False, True])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_enumeration_finds_exactly_the_brute_force_feasible_set(seed, method, keep_single):
    inst = random_instance(seed)
    budget_p, budget_m = 250_000, 3_000_000
    forbid = [["tokens", "maps"]]
    oracle = {ids(c): (p, m, s) for c, p, m, s in brute_force(inst, budget_p, budget_m, forbid, keep_single)}
    assert oracle, "the instance should have feasible assemblies"
    got = enumerate_assemblies(inst, budget_p, budget_m, n=10_000, forbid=forbid, seed=0, method=method,
                               keep_single=keep_single)
    assert {ids(c["blocks"]) for c in got} == set(oracle)
    for c in got:  # reported costs are the exact totals
        assert (c["params"], c["macs"]) == oracle[ids(c["blocks"])][:2]
    surrogate = [c["surrogate"] for c in got]
    assert all(x >= y - 1e-9 for x, y in zip(surrogate, surrogate[1:], strict=False)), "best surrogate first"
    assert surrogate[0] == pytest.approx(max(s for _, _, s in oracle.values()))
    assert all((c["single_model"] is not None) == (len({b["model"] for b in c["blocks"]}) == 1) for c in got)


@pytest.mark.parametrize("method", METHODS)
def test_top_n_is_a_prefix_of_the_full_enumeration_and_deterministic(method):
    inst = random_instance(3)
    full = enumerate_assemblies(inst, 1e9, 1e12, n=1000, seed=0, method=method)
    top = enumerate_assemblies(inst, 1e9, 1e12, n=5, seed=0, method=method)
    assert [c["surrogate"] for c in top] == pytest.approx([c["surrogate"] for c in full[:5]])
    assert top == enumerate_assemblies(inst, 1e9, 1e12, n=5, seed=0, method=method)


@pytest.mark.parametrize("seed", [8, 9])
def test_the_fast_walk_and_the_ilp_give_the_same_top_n_and_scip_certifies_the_optimum(seed):
    inst = random_instance(seed, models=("a", "b", "c", "d", "e", "f"), k=4)
    budget_p, budget_m = 250_000, 2_500_000
    forbid = [["tokens", "maps"]]
    walk = enumerate_assemblies(inst, budget_p, budget_m, n=20, forbid=forbid, method="best_first")
    ilp = enumerate_assemblies(inst, budget_p, budget_m, n=20, forbid=forbid, method="scip")
    assert [c["surrogate"] for c in walk] == pytest.approx([c["surrogate"] for c in ilp])
    oracle = sorted((s for *_, s in brute_force(inst, budget_p, budget_m, forbid)), reverse=True)
    assert [c["surrogate"] for c in walk] == pytest.approx(oracle[:20])
    assert solve_optimal(inst, budget_p, budget_m, forbid)["surrogate"] == pytest.approx(oracle[0])


def test_equal_surrogates_come_in_a_fixed_order_and_none_is_lost():
    inst = random_instance(10)
    for b in inst.blocks:
        b["score"] = 1.0
    got = enumerate_assemblies(inst, 1e9, 1e12, n=10_000)
    assert len({ids(c["blocks"]) for c in got}) == len(got) == sum(1 for _ in brute_force(inst, 1e9, 1e12))
    assert got == enumerate_assemblies(inst, 1e9, 1e12, n=10_000)


def test_an_unknown_search_method_is_named():
    with pytest.raises(ValueError, match="best_first"):
        enumerate_assemblies(random_instance(0), 1e9, 1e12, n=1, method="random")


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


@pytest.mark.parametrize("method", METHODS)
def test_non_finite_coefficients_never_reach_the_search(method):
    inst = random_instance(7)
    inst.blocks[0]["score"] = float("-inf")
    with pytest.raises(ValueError, match="non-finite"):
        enumerate_assemblies(inst, 1e9, 1e12, n=1, method=method)


# ------------------------------------------------------------------ transitions and single-model chains

def family_instance():
    """One block per stage from a CNN (resnet), a Swin (NHWC maps, attention) and a ViT (tokens)."""
    kinds = {"resnet": ("NCHW", "cnn"), "swin": ("NHWC", "transformer"), "vit": ("NLC", "transformer")}
    blocks, pairs, stem, head = [], {}, {}, {}
    for i, (m, (fmt, fam)) in enumerate(kinds.items()):
        for s in range(2):
            blocks.append(dict(model=m, stage=s, start=s + 1, end=s + 1, set=s, params=1000, macs=1000,
                               score=1.0 + 0.1 * i, fmt_in=fmt, fmt_out=fmt, fam_in=fam, fam_out=fam))
    for a in blocks:
        for b in blocks:
            if b["stage"] == a["stage"] + 1:
                pairs[pair_key(a, b)] = {"params": 10, "macs": 10}
        (stem if a["stage"] == 0 else head)[key(a)] = {"params": 1, "macs": 1}
    return Instance(blocks, pairs, stem, head, 2)


def transitions(forbid, method="best_first"):
    got = enumerate_assemblies(family_instance(), 1e9, 1e12, n=100, forbid=forbid, method=method)
    return {" > ".join(b["model"] for b in c["blocks"]) for c in got}


@pytest.mark.parametrize("method", METHODS)
def test_the_authors_rule_is_by_family_cnn_to_transformer_only_and_swin_is_a_transformer(method):
    got = transitions([["transformer", "cnn"]], method)
    assert {"resnet > swin", "resnet > vit", "vit > swin", "swin > vit"} <= got
    assert not {"swin > resnet", "vit > resnet"} & got, "no Transformer (Swin included) feeds a CNN"


def test_the_layout_rule_stays_available_and_treats_swin_maps_as_maps():
    got = transitions([["tokens", "maps"]])
    assert "swin > resnet" in got and "vit > swin" not in got and "vit > resnet" not in got
    assert {"resnet > swin", "resnet > vit", "swin > resnet", "swin > vit", "vit > swin",
            "vit > resnet"} == transitions([])


def test_a_zoo_model_re_headed_is_no_candidate_unless_kept_and_then_it_is_labelled():
    inst = family_instance()
    dropped = enumerate_assemblies(inst, 1e9, 1e12, n=100, forbid=[])
    assert all(c["single_model"] is None and len({b["model"] for b in c["blocks"]}) == 2 for c in dropped)
    kept = enumerate_assemblies(inst, 1e9, 1e12, n=100, forbid=[], keep_single=True)
    assert {c["single_model"] for c in kept} == {None, "resnet", "swin", "vit"} and len(kept) == len(dropped) + 3
    best = solve_optimal(inst, 1e9, 1e12, [], keep_single=False)
    assert best["single_model"] is None and best["surrogate"] == pytest.approx(dropped[0]["surrogate"])


def test_only_dery_s_families_reach_the_rule_and_old_cost_files_are_named():
    inst = family_instance()
    for b in inst.blocks:
        del b["fam_in"], b["fam_out"]
    with pytest.raises(ValueError, match="re-run the features"):
        enumerate_assemblies(inst, 1e9, 1e12, n=1, forbid=[["transformer", "cnn"]])


def test_a_block_keeps_its_depth_when_its_set_is_out_of_depth_order():
    """Sets out of depth order (a model's stage-1 block in set 2): the block is still placed at its stage,
    as the paper arranges blocks by stage index; the set only counts towards one block per set."""
    inst = random_instance(4, aligned=False)
    for c in enumerate_assemblies(inst, 1e9, 1e12, n=200, keep_single=True):
        assert [b["stage"] for b in c["blocks"]] == list(range(inst.k))
        assert sorted(b["set"] for b in c["blocks"]) == list(range(inst.k))
    swapped = [b for b in inst.blocks if b["set"] != b["stage"]]
    assert swapped and any(any(b["set"] != b["stage"] for b in c["blocks"])
                           for c in enumerate_assemblies(inst, 1e9, 1e12, n=200))
