"""The claims machinery: analysis functions with known answers, and the target on the smoke params."""
import itertools
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import clone_project, project_env
from scipy import stats

from dery import claims as C
from dery.stages.claims import spread_rank

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- verdicts


def test_verdicts_follow_the_interval():
    assert C.verdict(0.01, 0.3) == "holds"
    assert C.verdict(-0.3, -0.01) == "reversed"
    assert C.verdict(-0.1, 0.2) == "inconclusive"
    assert C.verdict(float("nan"), 1.0) == "n/a"
    assert C.verdict(float("nan"), float("nan")) == "n/a"


def test_welch_interval_is_the_welch_satterthwaite_t_interval():
    a, b = [0.81, 0.83, 0.80], [0.70, 0.74, 0.69, 0.72]
    ci = C.welch_ci(a, b)
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff = np.mean(a) - np.mean(b)
    q = stats.t.ppf(0.975, dof)
    assert ci["diff"] == pytest.approx(diff)
    assert (ci["lo"], ci["hi"]) == pytest.approx((diff - q * se, diff + q * se), rel=1e-9)
    assert ci["p"] == pytest.approx(2 * stats.t.sf(abs(diff) / se, dof), rel=1e-9)
    assert C.verdict(ci["lo"], ci["hi"]) == "holds"
    assert C.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)


def test_a_comparison_without_spread_or_with_one_sample_has_no_verdict():
    # three copies of one run on each side: no spread to estimate an interval from, so no "holds"/"reversed"
    same = C.welch_ci([0.4644] * 3, [0.4644] * 3)
    assert same["diff"] == 0 and np.isnan(same["lo"]) and np.isnan(same["hi"]) and np.isnan(same["p"])
    assert C.verdict(same["lo"], same["hi"]) == "n/a"
    shifted = C.welch_ci([0.50] * 3, [0.4644] * 3)
    assert shifted["diff"] > 0 and C.verdict(shifted["lo"], shifted["hi"]) == "n/a"
    one = C.welch_ci([0.50, 0.52, 0.51], [0.4644])
    assert C.verdict(one["lo"], one["hi"]) == "n/a"
    # spread on one side is enough for a Welch interval
    half = C.welch_ci([0.50, 0.52, 0.51], [0.4644, 0.4644])
    assert C.verdict(half["lo"], half["hi"]) == "holds"


# ---------------------------------------------------------------------- (a) depth alignment


def _cka(na, nb, diagonal=True):
    da, db = np.arange(na + 1) / na, np.arange(nb + 1) / nb
    gap = np.abs(da[:, None] - (db if diagonal else 1 - db)[None, :])
    return 1 - gap


def test_a_diagonal_cka_aligns_and_an_antidiagonal_one_is_reversed():
    rng = np.random.default_rng(0)
    diag = C.depth_alignment(_cka(8, 14), rng, 300)
    assert diag["mean_abs_ddepth"] < 0.05 and diag["spearman"] > 0.99 and diag["p_value"] < 0.01
    assert diag["null_mean"] == pytest.approx(1 / 3, abs=0.08)  # |U - V| of independent uniform depths
    anti = C.depth_alignment(_cka(8, 14, diagonal=False), rng, 300)
    assert anti["mean_abs_ddepth"] > 0.5 and anti["spearman"] < -0.99
    s = C.summarise_depth_alignment({"x~y": diag, "x~z": C.depth_alignment(_cka(5, 9), rng, 300)})
    assert s["verdict"] == "holds" and s["pairs"] == 2 and s["pairs_significant"] == 2
    assert C.summarise_depth_alignment({"x~y": anti})["verdict"] == "reversed"


def test_a_uses_both_directions():
    # A's every node is most similar to B's last node, B's nodes are most similar to A's matching depth
    cka = np.zeros((5, 5))
    cka[:, 4] = 1.0
    res = C.depth_alignment(cka, np.random.default_rng(0), 100)
    own_a = np.arange(5) / 4
    want = (np.abs(own_a - 1).sum() + np.abs(own_a - 0).sum()) / 10  # B->A: argmax of a constant column is row 0
    assert res["mean_abs_ddepth"] == pytest.approx(want)


# ---------------------------------------------------------------------- (b) stage alignment


def test_b_random_partitions_are_not_aligned_by_construction():
    n_nodes = {"a": 8, "b": 11, "c": 16, "d": 6}
    rng = np.random.default_rng(0)
    null = C.random_partition_alignment(n_nodes, 3, 0.2, True, rng, 400)
    assert null.min() >= 0 and null.max() <= 1
    assert 0.2 < null.mean() < 0.75  # above 1/3 (sets renumbered by depth) but far from forced alignment
    perfect = C.alignment_against_random(1.0, null)
    assert perfect["verdict"] == "holds" and perfect["p_value"] < 0.05
    assert C.alignment_against_random(float(null.mean()) - 0.2, null)["verdict"] == "reversed"
    assert C.alignment([0, 1, 2, 0], [0, 1, 1, 0]) == 0.75


def test_e_random_cuts_are_uniform_over_every_cutting_with_no_size_bound():
    from dery import partition as P

    rng = np.random.default_rng(0)
    n, k = 8, 3
    every = set(itertools.combinations(range(2, n + 1), k - 1))  # K-1 of the N-1 gaps
    draws = Counter(tuple(C.uniform_cuts(rng, n, k)) for _ in range(60 * len(every)))
    assert set(draws) == every, "every cutting has positive probability"
    assert max(draws.values()) < 1.6 * min(draws.values()), "about uniform"
    sizes = [np.diff([1, *cuts, n + 1]) for cuts in draws]
    assert all(min(z) >= 1 for z in sizes)
    assert max(max(z) for z in sizes) > P.size_bound(n, k, 0.2), "the partition's size bound is not applied"
    assert C.uniform_cuts(rng, 3, 3) == [2, 3]
    with pytest.raises(ValueError):
        C.uniform_cuts(rng, 2, 3)


def test_e_random_cut_partition_puts_each_block_in_its_stage_set_and_ignores_the_size_bound():
    from dery import partition as P

    n_nodes = {"a": 8, "b": 11, "c": 6}
    rng = np.random.default_rng(1)
    pairs = {(x, y): rng.uniform(size=(n_nodes[x] + 1, n_nodes[y] + 1)) for x in n_nodes for y in n_nodes if x <= y}
    largest = 0
    for _ in range(20):
        doc = C.random_cut_partition(n_nodes, 3, P.Similarity(pairs), rng)
        assert Counter(b["model"] for b in doc["blocks"]) == {"a": 3, "b": 3, "c": 3}
        for b in doc["blocks"]:
            assert b["set"] == b["stage"]
            largest = max(largest, (b["end"] - b["start"] + 1) / P.size_bound(n_nodes[b["model"]], 3, 0.2))
        for m, n in n_nodes.items():
            mine = sorted((b for b in doc["blocks"] if b["model"] == m), key=lambda b: b["stage"])
            assert mine[0]["start"] == 1 and mine[-1]["end"] == n
            assert all(x["end"] + 1 == y["start"] and x["start"] <= x["end"]
                       for x, y in zip(mine, mine[1:], strict=False))
        for j, a in enumerate(doc["anchors"]):
            assert a["stage"] == j
    assert largest > 1, "some block is larger than the partition's size bound"


# ---------------------------------------------------------------------- (d) rank correlation


def test_d_tau_and_rho_match_scipy_with_ties():
    rng = np.random.default_rng(3)
    for n in (5, 12, 30):
        x, y = rng.integers(0, 4, n).astype(float), rng.normal(size=n).round(1)
        assert C._tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
        assert C._rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_d_rank_correlation_known_answers_and_bootstrap():
    x = np.arange(20.0)
    perfect = C.rank_correlation([(x, 2 * x + 1)], n_boot=200)
    assert perfect["tau"] == 1.0 and perfect["rho"] == pytest.approx(1.0)
    assert perfect["tau_lo"] == pytest.approx(1.0) and perfect["n"] == 20
    assert C.rank_correlation([(x, -x)], n_boot=200)["tau"] == -1.0
    rng = np.random.default_rng(0)
    y = x + rng.normal(scale=6, size=20)
    got = C.rank_correlation([(x, y)], n_boot=500, seed=1)
    assert got["tau"] == pytest.approx(stats.kendalltau(x, y).statistic)
    assert got["tau_lo"] < got["tau"] < got["tau_hi"]
    assert got == C.rank_correlation([(x, y)], n_boot=500, seed=1), "seeded"
    # two budgets: the n-weighted mean of the per-budget values; None scores are dropped
    g2 = (np.arange(10.0), -np.arange(10.0))
    pooled = C.rank_correlation([(x, 2 * x), g2], n_boot=100)
    assert pooled["tau"] == pytest.approx((20 * 1 + 10 * -1) / 30)
    withnone = C.rank_correlation([([1.0, None, 3.0, 4.0], [1.0, 5.0, 3.0, 4.0])], n_boot=50)
    assert withnone["n"] == 3 and withnone["tau"] == 1.0


IDS = [f"c{i:02d}" for i in range(12)]
VAL = dict(zip(IDS, np.linspace(0.60, 0.80, len(IDS)), strict=True))


def _assemblies(scores: dict[str, dict[str, float]], test: dict[str, float] | None = None,
                budgets=("small", "large")) -> dict:
    test = test or VAL
    return {b: {i: {"scores": {n: v[i] for n, v in scores.items()}, "val_acc": VAL[i], "test_acc": test[i]}
                for i in IDS} for b in budgets}


def test_d_proxy_selection_uses_validation_accuracy_never_test_accuracy():
    test = {i: 1.4 - v for i, v in VAL.items()}  # the test set ranks the assemblies the other way round
    asm = _assemblies({"by_val": VAL, "by_test": test}, test)
    sel = C.select_proxy(asm, ["by_test", "by_val"], "naswot", seed=0)
    assert sel.selection_tau == {"by_val": 1.0, "by_test": -1.0}
    assert sel.selected == sel.heldout_best == sel.recommended == "by_val" and sel.wins_heldout
    assert sel.heldout_test_tau["by_test"] == 1.0, "test accuracy is reported, not used"


def test_d_proxy_selection_holds_out_assemblies_split_per_budget_and_seeded():
    sel = C.select_proxy(_assemblies({"by_val": VAL}), ["by_val"], "naswot", seed=0)
    for h in sel.split.values():
        assert len(h["selection"]) == len(h["heldout"]) == 6
        assert not set(h["selection"]) & set(h["heldout"]) and set(h["selection"]) | set(h["heldout"]) == set(IDS)
    assert sel.split["small"] != sel.split["large"], "each budget has its own split"
    assert C.select_proxy(_assemblies({"by_val": VAL}), ["by_val"], "naswot", seed=0) == sel, "deterministic"
    assert C.select_proxy(_assemblies({"by_val": VAL}), ["by_val"], "naswot", seed=1).split != sel.split
    assert [len(h) for h in C.split_halves(IDS[:7], 0, "x")] == [4, 3], "the selection half is the larger"


def test_d_a_proxy_that_ranks_only_the_assemblies_it_was_chosen_on_is_not_recommended():
    chosen_on, held_out = C.split_halves(IDS, 0, "small")
    lucky = {i: VAL[i] if i in chosen_on else -VAL[i] for i in IDS}  # perfect where selected, reversed elsewhere
    steady = dict(VAL)
    for half in (chosen_on, held_out):  # one swapped pair per half: τ = 13/15 on each
        steady[half[0]], steady[half[1]] = steady[half[1]], steady[half[0]]
    sel = C.select_proxy(_assemblies({"lucky": lucky, "steady": steady}, budgets=("small",)), ["lucky", "steady"],
                         "naswot", seed=0)
    assert sel.selected == "lucky" and sel.heldout_best == "steady"
    assert not sel.wins_heldout and sel.recommended == "naswot"
    negative = {i: -v for i, v in VAL.items()}
    sel = C.select_proxy(_assemblies({"neg": negative}), ["neg"], "naswot", seed=0)
    assert sel.selected == "neg" and not sel.wins_heldout and sel.recommended == "naswot", "never a τ <= 0 proxy"


def test_d_proxy_selection_needs_three_assemblies_in_each_half():
    def first(n):
        return {"small": {i: {"scores": {"p": VAL[i]}, "val_acc": VAL[i], "test_acc": VAL[i]} for i in IDS[:n]}}

    assert C.select_proxy(first(5), ["p"], "naswot", seed=0) is None  # halves of 3 and 2: no held-out τ
    assert C.select_proxy(first(6), ["p"], "naswot", seed=0).recommended == "p"


def test_tau_study_slots_spread_over_the_ranking():
    assert [spread_rank(i, 5, 41) for i in range(5)] == [0, 10, 20, 30, 40]
    assert [spread_rank(i, 4, 3) for i in range(4)] == [0, 1, 2, None]
    ranks = [spread_rank(i, 20, 131) for i in range(20)]
    assert ranks[0] == 0 and ranks[-1] == 130 and len(set(ranks)) == 20


# ---------------------------------------------------------------------- (e) random assemblies


def _feasible(inst, max_params, max_macs, forbid):
    """Every feasible assembly by exhaustive product, zoo models re-headed included (the test's own oracle)."""
    from dery.reassembly import allowed

    by_stage = [[b for b in inst.blocks if b["stage"] == s] for s in range(inst.k)]
    for combo in itertools.product(*by_stage):
        if len({b["set"] for b in combo}) == inst.k and all(allowed(a, b, forbid)
                                                            for a, b in zip(combo, combo[1:], strict=False)):
            p, m = inst.totals(list(combo))
            if p <= max_params and m <= max_macs:
                yield list(combo)


def test_e_uniform_feasible_draws_every_genuine_assembly_about_equally():
    sys.path.insert(0, str(ROOT / "tests"))
    from test_reassembly import ids, random_instance

    inst = random_instance(0, aligned=True)  # aligned sets: every model's own chain is feasible
    forbid = [["tokens", "maps"]]
    limits = (10**9, 10**9)
    every = list(_feasible(inst, *limits, forbid))
    zoo = {ids(c) for c in every if C._single_model(c)}
    genuine = {ids(c) for c in every} - zoo
    assert zoo and genuine
    rng = np.random.default_rng(0)
    draws = Counter(ids(C.uniform_feasible(inst, *limits, forbid, rng)[0]) for _ in range(40 * len(genuine)))
    assert set(draws) == genuine, "a zoo model with a new head is never drawn"
    assert max(draws.values()) < 2.5 * min(draws.values())
    kept = Counter(ids(C.uniform_feasible(inst, *limits, forbid, rng, keep_single_model=True)[0])
                   for _ in range(40 * len(every)))
    assert set(kept) == genuine | zoo
    # the exhaustive fallback follows the same rule
    assert all(ids(C.uniform_feasible(inst, *limits, forbid, rng, tries=0)[0]) in genuine for _ in range(30))
    assert C.uniform_feasible(inst, 1, 1, forbid, rng, tries=50) is None


def test_single_model_means_one_models_consecutive_blocks():
    chain = [{"model": "vit_A", "start": 1, "end": 4}, {"model": "vit_A", "start": 5, "end": 9},
             {"model": "vit_A", "start": 10, "end": 12}]
    assert C._single_model(chain) == "vit_A"
    assert C._single_model([chain[0], chain[2]]) is None, "a skipped block is a different network"
    assert C._single_model([chain[0], {**chain[1], "model": "swin_B"}, chain[2]]) is None
    from dery import reassembly as R

    if hasattr(R, "single_model"):  # the pipeline labels candidates by the same rule
        for blocks in (chain, [chain[0], chain[2]], [chain[0], {**chain[1], "model": "swin_B"}, chain[2]]):
            assert R.single_model(blocks) == C._single_model(blocks)


def _net(*blocks):
    return [{"model": m, "start": a, "end": b} for m, a, b in blocks]


PICK = _net(("swin_B", 1, 3), ("mobilenetv3_B", 5, 8), ("vit_A", 5, 6))
OTHER = _net(("resnet18_A", 1, 2), ("mobilenetv3_B", 5, 8), ("vit_A", 5, 6))
THIRD = _net(("resnet18_A", 1, 3), ("swin_B", 3, 4), ("vit_A", 5, 6))
ZOO = _net(("vit_A", 1, 4), ("vit_A", 5, 8), ("vit_A", 9, 12))


def test_e_draws_of_the_same_network_are_one_sample():
    # the bug: three draws that all proxy-rank the pick's own network were three samples, 0.4644 ± 0 (n=3)
    copies = C.arm_comparison([0.47, 0.46, 0.48], PICK, [(PICK, 0.4644), (PICK, 0.4650), (PICK, 0.4640)])
    assert copies["networks"] == 1 and copies["draws"] == 3 and copies["acc"][2] == 1
    assert copies["acc"][0] == pytest.approx(np.mean([0.4644, 0.4650, 0.4640]))
    assert copies["same_as_pick"] == 1 and copies["runs_per_network"] == [3]
    assert copies["verdict"] == "n/a"
    two = C.arm_comparison([0.47, 0.46, 0.48], PICK, [(OTHER, 0.40), (THIRD, 0.30), (OTHER, 0.42)])
    assert two["networks"] == 2 and two["same_as_pick"] == 0
    assert sorted(two["runs_per_network"]) == [1, 2]
    assert two["acc"][:2] == pytest.approx((np.mean([0.41, 0.30]), np.std([0.41, 0.30], ddof=1)))
    assert two["vs_pick"] == pytest.approx(C.welch_ci([0.47, 0.46, 0.48], [0.41, 0.30]))
    assert two["verdict"] != "n/a"


def test_e_a_zoo_model_with_a_new_head_is_its_own_row_not_an_arm_sample():
    got = C.arm_comparison([0.47, 0.46, 0.48], PICK, [(ZOO, 0.55), (OTHER, 0.40), (THIRD, 0.30)])
    assert got["networks"] == 2 and got["acc"][0] == pytest.approx(0.35)
    assert list(got["single_model"]) == ["vit_A"]
    assert got["single_model"]["vit_A"][0] == 0.55 and got["single_model"]["vit_A"][2] == 1


# --------------------------------------------------------------- the claims stage, on synthetic result files


def _write_spec(path: Path, blocks, test_acc, val_acc=None, **extra) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"id": extra.pop("id", path.stem), "blocks": blocks, "test_acc": test_acc,
                                "val_acc": val_acc, "params": 1e6, **extra}))
    return str(path)[: -len(".json")] + ".metrics.json"


def _manifest(claims: dict, seed: int = 0) -> dict:
    """claims_common.smk's manifest for a params file, without Snakemake."""
    ns = {"config": {"claims": claims, "seed": seed, "finetune": {"scratch_baseline": True, "zoo_baselines": True}},
          "PROTOCOLS": ["FT", "FZ"], "BUDGETS": {"small": {}, "large": {}}, "MODELS": ["a", "b"]}
    src = ROOT / "workflow" / "rules" / "claims_common.smk"
    exec(compile(src.read_text(), str(src), "exec"), ns)
    return ns["claims_manifest"]()


def test_e_every_draw_of_a_random_arm_is_fine_tuned_with_its_own_seed():
    claims = {"protocol": "FT", "seeds": 3, "tau_seeds": 2, "assemblies_per_budget": 4, "random_draws": 3}
    m = _manifest(claims, seed=5)
    seed_of = lambda f: int(re.search(r"seed([0-9]+)\.metrics\.json$", f).group(1))  # noqa: E731
    pick_seeds = {5, 6, 7}
    for arm, by_budget in m["arms"].items():
        for files in by_budget.values():
            seeds = [seed_of(f) for f in files.values()]
            assert len(set(seeds)) == len(seeds) == 3, f"{arm}: one seed per draw"
            assert not set(seeds) & pick_seeds, f"{arm}: no draw shares a seed with the pick"
    assert {seed_of(f) for f in m["tau"]["small"][0].values() if "seed" in f} <= pick_seeds
    many = _manifest({**claims, "seeds": 2000}, seed=5)
    assert min(seed_of(f) for f in many["arms"]["cuts"]["small"].values()) >= 5 + 2000


def test_e_summary_collapses_copies_of_the_pick_and_says_so(tmp_path):
    from dery.stages.claims_summary import _claim_e

    tau = {"large": {0: {s: _write_spec(tmp_path / f"pick{s}.json", PICK, acc, id="large-c000")
                         for s, acc in zip((0, 1, 2), (0.47, 0.46, 0.48), strict=True)}}}
    arms = {"cuts": {"large": {d: _write_spec(tmp_path / f"cuts{d}.json", PICK, 0.4644, id="large-c000",
                                              seed=1000 + d) for d in range(3)}},
            "rand_cover": {"large": {d: _write_spec(tmp_path / f"cover{d}.json", net, acc, seed=1000 + d)
                                     for d, (net, acc) in enumerate([(OTHER, 0.40), (THIRD, 0.30), (ZOO, 0.55)])}}}
    e = _claim_e(tau, arms, {"large": {}})["large"]
    assert e["pick"][2] == 3 and e["single_model"] is None
    assert e["cuts"]["networks"] == 1 and e["cuts"]["same_as_pick"] == 1 and e["cuts"]["verdict"] == "n/a"
    assert e["cuts"]["seeds"] == [1000, 1001, 1002]
    assert e["rand_cover"]["networks"] == 2 and list(e["rand_cover"]["single_model"]) == ["vit_A"]
    # a pick that is one zoo model re-headed gets its numbers, not a verdict about reassembly
    zoo_pick = {"large": {0: {s: _write_spec(tmp_path / f"zpick{s}.json", ZOO, acc)
                              for s, acc in zip((0, 1, 2), (0.57, 0.56, 0.58), strict=True)}}}
    z = _claim_e(zoo_pick, arms, {"large": {}})["large"]
    assert z["single_model"] == "vit_A" and z["rand_cover"]["verdict"] == "n/a"


def _tau_study(tmp_path: Path) -> dict:
    """8 genuine assemblies (test and validation accuracy rank them oppositely) + one zoo model re-headed."""
    tau: dict = {"small": {}}
    for slot in range(9):
        blocks = ZOO if slot == 8 else _net(("resnet18_A", 1, 1 + slot), ("swin_B", 3, 4), ("vit_A", 5, 6))
        for s in (0, 1):
            val = 0.6 + 0.02 * slot + 0.001 * s
            test = 0.9 - 0.02 * slot + 0.001 * s
            tau["small"].setdefault(slot, {})[s] = _write_spec(
                tmp_path / f"tau{slot}_{s}.json", blocks, test, val, id=f"small-c{slot:03d}", rank=slot,
                proxy_scores={"by_val": slot, "by_test": -slot})
    return tau


def test_d_summary_selects_on_validation_accuracy_and_leaves_out_zoo_models(tmp_path):
    from dery.stages.claims_summary import _claim_d

    d = _claim_d(_tau_study(tmp_path), ["by_test", "by_val"], "naswot", 100, 0, None, [0, 1])
    assert d["n_per_budget"] == {"small": 8} and d["single_model"] == {"small": {"small-c008": "vit_A"}}
    assert d["proxies"]["by_test"]["pooled_mean_acc"]["tau"] == 1.0, "the claim itself is measured on test accuracy"
    sel = d["selection"]
    assert sel["selected"] == sel["recommended"] == "by_val" and sel["wins_heldout"]
    assert len(sel["split"]["small"]["selection"]) == len(sel["split"]["small"]["heldout"]) == 4


def test_the_report_renders_the_new_rows(tmp_path):
    from dery.stages.claims_summary import _claim_c, _claim_d, _claim_e, render

    tau = _tau_study(tmp_path)
    tau["small"][0] = {s: _write_spec(tmp_path / f"p{s}.json", PICK, acc, 0.5, id="small-c000",
                                      proxy_scores={"by_val": 0, "by_test": 0}) for s, acc in ((0, 0.47), (1, 0.46))}
    scratch = {"small": {}}
    for s, acc in ((0, 0.30), (1, 0.31)):
        scratch["small"][s] = str(tmp_path / f"scratch{s}.metrics.json")
        Path(scratch["small"][s]).write_text(json.dumps({"key": "k", "metrics": {"test_acc": acc, "params": 1e6}}))
    arms = {"cuts": {"small": {d: _write_spec(tmp_path / f"c{d}.json", PICK, 0.4644, seed=1000 + d) for d in range(2)}}}
    stage = {"alignment": 1.0, "random_mean": 0.4, "random_p95": 0.6, "p_value": 0.01, "verdict": "holds"}
    doc = {"a": {"pairs": {}, "summary": None},
           "b": {"one_per_model": True, "pipeline": stage, "alternative": {**stage, "set_sizes": [4, 4, 4]},
                 "composition": [[4, 0, 0], [0, 4, 0], [0, 0, 4]], "objective": 1.0},
           "c": _claim_c(tau, scratch, {}, {"small": {}}),
           "d": _claim_d(tau, ["by_test", "by_val"], "by_val", 100, 0, None, [0, 1]),
           "e": _claim_e(tau, arms, {"small": {}}), "proxy_seconds_per_candidate": {}, "candidates": {"small": 9},
           "protocol": "FT", "chosen_proxy": "by_val",
           "config": {"bootstrap": 100, "permutations": 100, "random_draws": 2}}
    md = render(doc, {"name": "t"}, str(tmp_path))
    assert "small-c008 = zoo model vit_A with a new head, not a reassembly" in md
    assert "1 distinct network of 2 draws, incl. the pick's own network" in md
    assert "on validation accuracy only" in md and "CKA-driven cut placement and set grouping" in md
    assert "| **n/a** |" in md
# ---------------------------------------------------------------------- the target, smoke-sized


def _snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=work, capture_output=True, text=True,
                          env=project_env(work))
    if proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.mark.slow
def test_claims_target_on_the_smoke_params(smoke_project, tmp_path):
    """Claims at toy size (params/smoke.yaml's `claims`: 3 assemblies, 2 seeds, 1 random draw, 1 epoch) on top of a
    finished smoke run: every section has its numbers and a verdict, the claims runs are in MLflow and nothing of
    the main run is recomputed."""
    work = clone_project(smoke_project, tmp_path / "p")
    ran = _snakemake(work, "claims", "--cores", "2", "--configfile", "params/smoke.yaml")
    jobs = {line.split("rule ")[1].rstrip(":").strip() for line in (ran.stdout + ran.stderr).splitlines()
            if line.startswith("rule ")}
    assert all(j.startswith("claims") for j in jobs), jobs
    res = work / "results"
    md = (res / "claims.md").read_text()
    for section in ("## (a)", "## (b)", "## (c)", "## (d)", "## (e)", "## Summary"):
        assert section in md
    for proxy in ("naswot", "kta", "logme", "linear_probe", "jacov", "synflow"):
        assert f"| {proxy}" in md
    assert (res / "claims" / "cka_heatmaps.png").stat().st_size > 1000
    doc = json.loads((res / "claims" / "claims.json").read_text())
    assert doc["d"]["n_per_budget"]["tiny"] == 3 and doc["d"]["seeds"] == [0, 1]
    assert doc["c"]["tiny"]["pick"][2] == 2 and doc["c"]["tiny"]["scratch"][2] == 2
    assert set(doc["e"]["tiny"]) == {"pick", "pick_id", "single_model", "cuts", "rand_cover", "rand_cuts"}
    assert doc["e"]["tiny"]["cuts"]["seeds"] == [1000], "the arm's draw is fine-tuned with its own seed"
    assert all(doc["e"]["tiny"][arm]["networks"] == 1 for arm in ("cuts", "rand_cover", "rand_cuts"))
    rec = json.loads((res / "claims.metrics.json").read_text())
    assert rec["key"] == "claims" and rec["tags"]["stage"] == "claims" and "d_tau_naswot" in rec["metrics"]
    ranking = json.loads((res / "proxy" / "tiny" / "ranking.json").read_text())
    assert all(set(c["proxy_scores"]) >= {"naswot", "kta", "logme"} for c in ranking["candidates"])

    from dery.tracking import runs

    df = runs("sqlite:///" + str(res / "mlflow.db"), "smoke")
    claims = df[df["tags.stage"] == "claims"]
    assert "claims" in set(claims["tags.dery.key"]) and len(claims) > 10
    slots = claims[claims["tags.dery.key"].str.contains("/slot")]
    assert set(slots["tags.mlflow.source.name"]) == {"workflow/rules/claims.smk:claims_finetune"}
    assert slots["metrics.job.seconds"].notna().all()                                # the job's own benchmark
    assert not any(k.startswith("claims/") for k in df[df["tags.stage"] == "finetune"]["tags.dery.key"])
    # nothing of the main run is recomputed by the claims jobs
    planned = _snakemake(work, "claims", "-n", "--cores", "1", "--configfile", "params/smoke.yaml").stdout
    assert "Nothing to be done" in planned or "total" not in planned
