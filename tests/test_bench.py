"""Reassembly-Bench's analysis (dery.bench): which assemblies are benchmarked, how proxies are scored against the
fine-tuned accuracies, and how the pick and the adapter variants are compared. Known answers on hand-made rows."""
import math

import numpy as np
import pytest
from scipy import stats

from dery import bench as BN


def cand(i, params):
    return {"id": f"c{i:03d}", "params": params}


def test_a_budget_with_few_candidates_is_benchmarked_whole():
    cands = [cand(i, 10 - i) for i in range(5)]
    assert BN.stratified_sample(cands, 5, 0, "small") == [c["id"] for c in cands]


def test_a_large_budget_gives_one_candidate_per_equal_count_params_bin():
    cands = [cand(i, p) for i, p in enumerate(np.random.default_rng(1).permutation(40))]
    ids = BN.stratified_sample(cands, 4, 0, "large")
    params = {c["id"]: c["params"] for c in cands}
    assert len(ids) == 4
    # bins of 10 by params: 0-9, 10-19, 20-29, 30-39 -> one each
    assert sorted(params[i] // 10 for i in ids) == [0, 1, 2, 3]
    assert BN.stratified_sample(cands, 4, 0, "large") == ids                      # seeded
    draws = {tuple(BN.stratified_sample(cands, 4, s, "large")) for s in range(10)}
    assert len(draws) > 1                                                          # and the seed matters


def test_spread_takes_first_and_last_and_evenly_between():
    assert BN.spread(list(range(11)), 3) == [0, 5, 10]
    assert BN.spread([1, 2], 5) == [1, 2]
    assert BN.spread([1, 2, 3], 0) == []
    assert BN.spread(list("abcdef"), 2) == ["a", "f"]


def test_each_proxy_picks_its_highest_scored_candidate_ties_to_the_smallest_id():
    scores = {"c1": {"a": 1.0, "b": 5.0, "c": None}, "c0": {"a": 1.0, "b": 2.0, "c": float("nan")},
              "c2": {"a": 0.5, "b": 9.0}}
    assert BN.picks(scores, ["a", "b", "c"]) == {"a": "c0", "b": "c2", "c": None}


def rows_with(accs: dict[str, list[float]], budget="small", protocol="FT", stitching="lstsq", params=None):
    """Assembly rows whose proxy `good` is the seed-mean accuracy, `bad` its negative, `noise` fixed."""
    out = []
    for k, (i, acc) in enumerate(sorted(accs.items())):
        m = float(np.mean(acc))
        out.append({"kind": "assembly", "budget": budget, "id": i, "protocol": protocol, "stitching": stitching,
                    "blocks": f"x[{k}]", "params": (params or {}).get(i, 1e6), "macs": 1e6,
                    "scores": {"good": m, "bad": -m, "noise": [3, 1, 4, 1, 5, 9, 2, 6][k % 8]},
                    "val_acc": [a - 0.01 for a in acc], "test_acc": list(acc), "seeds": [0, 1]})
    return out


ACCS = {f"c{i}": [0.5 + 0.03 * i, 0.51 + 0.03 * i] for i in range(8)}


def test_a_proxy_equal_to_accuracy_has_tau_one_and_its_negative_minus_one():
    t = BN.proxy_table(rows_with(ACCS), ["good", "bad"], "FT", {"good": 0.5, "bad": 0.25}, 200, 0, "bad")
    assert t["proxies"]["good"]["tau"] == pytest.approx(1.0)
    assert t["proxies"]["good"]["rho"] == pytest.approx(1.0)
    assert t["proxies"]["bad"]["tau"] == pytest.approx(-1.0)
    assert t["proxies"]["good"]["seconds"] == 0.5
    assert t["assemblies"] == {"small": 8}


def test_the_default_is_chosen_on_validation_accuracy_and_confirmed_on_held_out_assemblies():
    t = BN.proxy_table(rows_with(ACCS), ["good", "bad", "noise"], "FT", {}, 200, 0, "bad")
    sel = t["selection"]
    assert sel["selected"] == "good" and sel["wins_heldout"] and sel["recommended"] == "good"
    halves = sel["split"]["small"]
    assert sorted(halves["selection"] + halves["heldout"]) == sorted(ACCS)        # disjoint halves of all
    assert not set(halves["selection"]) & set(halves["heldout"])


def test_tau_pools_budgets_weighted_by_their_assemblies():
    rows = rows_with(ACCS) + rows_with({f"d{i}": [0.9 - 0.1 * i] * 2 for i in range(4)}, budget="large")
    for r in rows[8:]:
        r["scores"]["good"] = -r["scores"]["good"]                                 # wrong on `large`
    t = BN.proxy_table(rows, ["good"], "FT", {}, 100, 0, "good")
    assert t["proxies"]["good"]["tau"] == pytest.approx((8 * 1 + 4 * -1) / 12)


def test_the_pick_is_compared_with_scratch_zoo_and_random_feasible_by_welch_intervals():
    rows = rows_with(ACCS)
    pick_accs = ACCS["c7"]
    scratch = [0.40, 0.44]
    rows.append({"kind": "scratch", "budget": "small", "id": "c7", "params": 1e6, "macs": 1e6, "test_acc": scratch,
                 "val_acc": scratch, "protocol": "FT", "stitching": "", "scores": {}, "seeds": [0, 1]})
    rows.append({"kind": "zoo", "budget": "", "id": "fits", "params": 1.5e6, "macs": 2e6, "test_acc": [0.8, 0.82],
                 "val_acc": [0.8, 0.8], "protocol": "FT", "stitching": "", "scores": {}, "seeds": [0, 1]})
    rows.append({"kind": "zoo", "budget": "", "id": "too_big", "params": 9e6, "macs": 2e6, "test_acc": [0.9, 0.9],
                 "val_acc": [0.9, 0.9], "protocol": "FT", "stitching": "", "scores": {}, "seeds": [0, 1]})
    c = BN.pick_comparison(rows, {"small": "c7"}, {"small": {"params_m": 2.0, "macs_m": 40}})["small"]
    assert c["pick"] == "c7" and c["acc"][0] == pytest.approx(np.mean(pick_accs))
    t = stats.ttest_ind(pick_accs, scratch, equal_var=False)
    assert c["scratch"]["diff"]["diff"] == pytest.approx(np.mean(pick_accs) - np.mean(scratch))
    assert c["scratch"]["diff"]["p"] == pytest.approx(t.pvalue)
    assert c["scratch"]["verdict"] == "holds"
    assert list(c["zoo"]) == ["fits"]                                              # only zoo models within budget
    means = [np.mean(v) for v in ACCS.values()]
    assert c["random_feasible"]["networks"] == 8
    assert c["random_feasible"]["diff"]["diff"] == pytest.approx(np.mean(pick_accs) - np.mean(means))


def test_paired_interval_is_the_t_interval_of_the_differences():
    ci = BN.paired_ci([0.01, 0.02, 0.03])
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert ci["diff"] == pytest.approx(0.02) and ci["lo"] == pytest.approx(0.02 - half)
    assert ci["hi"] == pytest.approx(0.02 + half) and ci["n"] == 3
    assert math.isnan(BN.paired_ci([0.01])["lo"])                                   # one pair: no interval
    assert math.isnan(BN.paired_ci([0.01, 0.01])["lo"])                             # no spread: no interval


def test_adapter_variants_are_compared_pairwise_on_the_same_assemblies():
    base = rows_with({"a": [0.5, 0.5], "b": [0.6, 0.6], "c": [0.7, 0.7]})
    trained = rows_with({"a": [0.55, 0.55], "b": [0.62, 0.62], "c": [0.78, 0.78]}, stitching="trained")
    only_two = rows_with({"a": [0.4, 0.4], "b": [0.5, 0.5]}, stitching="random")
    out = BN.stitching_comparison(base + trained + only_two, ["lstsq", "trained", "random"])["small"]
    assert out["trained"]["vs_base"]["diff"] == pytest.approx(np.mean([0.05, 0.02, 0.08]))
    assert out["trained"]["n"] == 3 and out["random"]["n"] == 2
    assert out["random"]["vs_base"]["diff"] == pytest.approx(-0.1)
    assert out["lstsq"]["vs_base"] is None and out["lstsq"]["n"] == 3                # those the others ran on
    base_only = rows_with({"z": [0.9, 0.9]})                                          # benchmarked, not compared
    out = BN.stitching_comparison(base + base_only + trained, ["lstsq", "trained"])["small"]
    assert out["lstsq"]["n"] == 3 and out["lstsq"]["acc"][0] == pytest.approx(0.6)
