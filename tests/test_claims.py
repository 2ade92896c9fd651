"""The claims machinery: analysis functions with known answers, and the target on the smoke params."""
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from dery import claims as C
from dery.stages.claims import spread_rank

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- verdicts


def test_verdicts_follow_the_interval():
    assert C.verdict(0.01, 0.3) == "holds"
    assert C.verdict(-0.3, -0.01) == "reversed"
    assert C.verdict(-0.1, 0.2) == "inconclusive"
    assert C.verdict(float("nan"), 1.0) == "not measurable"


def test_welch_interval_matches_scipy():
    a, b = [0.81, 0.83, 0.80], [0.70, 0.74, 0.69, 0.72]
    ci = C.welch_ci(a, b)
    t = stats.ttest_ind(a, b, equal_var=False)
    assert ci["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert ci["p"] == pytest.approx(t.pvalue, rel=1e-9)
    lo, hi = t.confidence_interval(0.95)
    assert (ci["lo"], ci["hi"]) == pytest.approx((lo, hi), rel=1e-9)
    assert C.mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)


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


def test_random_cut_partition_respects_the_size_bound_and_puts_blocks_in_their_stage_set():
    from dery import partition as P

    n_nodes = {"a": 8, "b": 11, "c": 6}
    rng = np.random.default_rng(1)
    pairs = {(x, y): rng.uniform(size=(n_nodes[x] + 1, n_nodes[y] + 1)) for x in n_nodes for y in n_nodes if x <= y}
    doc = C.random_cut_partition(n_nodes, 3, 0.2, P.Similarity(pairs), rng)
    by_model = Counter(b["model"] for b in doc["blocks"])
    assert by_model == {"a": 3, "b": 3, "c": 3}
    for b in doc["blocks"]:
        assert b["set"] == b["stage"]
        assert b["end"] - b["start"] + 1 <= P.size_bound(n_nodes[b["model"]], 3, 0.2)
    for m, n in n_nodes.items():
        mine = sorted((b for b in doc["blocks"] if b["model"] == m), key=lambda b: b["stage"])
        assert mine[0]["start"] == 1 and mine[-1]["end"] == n
        assert all(x["end"] + 1 == y["start"] for x, y in zip(mine, mine[1:]))
    for j, a in enumerate(doc["anchors"]):
        assert a["stage"] == j


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


def test_d_a_proxy_is_recommended_only_if_it_wins_on_held_out_seeds():
    taus = {0: {"naswot": -0.3, "kta": 0.5, "logme": 0.4}, 1: {"naswot": -0.2, "kta": 0.45, "logme": 0.3},
            2: {"naswot": -0.1, "kta": 0.5, "logme": 0.2}}
    sel = C.select_proxy(taus, "naswot")
    assert sel.selected == "kta" and sel.wins_heldout and sel.recommended == "kta"
    taus[1]["logme"] = taus[2]["logme"] = 0.9
    sel = C.select_proxy(taus, "naswot")
    assert sel.selected == "kta" and not sel.wins_heldout and sel.recommended == "naswot"
    assert C.select_proxy({0: taus[0]}, "naswot") is None
    negative = {0: {"naswot": -0.5, "kta": -0.1}, 1: {"naswot": -0.4, "kta": -0.2}}
    sel = C.select_proxy(negative, "naswot")
    assert sel.selected == "kta" and not sel.wins_heldout and sel.recommended == "naswot", "never a τ <= 0 proxy"


def test_tau_study_slots_spread_over_the_ranking():
    assert [spread_rank(i, 5, 41) for i in range(5)] == [0, 10, 20, 30, 40]
    assert [spread_rank(i, 4, 3) for i in range(4)] == [0, 1, 2, None]
    ranks = [spread_rank(i, 20, 131) for i in range(20)]
    assert ranks[0] == 0 and ranks[-1] == 130 and len(set(ranks)) == 20


# ---------------------------------------------------------------------- (e) random assemblies


def test_e_uniform_feasible_draws_every_feasible_assembly_about_equally():
    sys.path.insert(0, str(ROOT / "tests"))
    from test_reassembly import ids, random_instance

    from dery.reassembly import brute_force

    inst = random_instance(0)
    forbid = [["tokens", "maps"]]
    feasible = {ids(c) for c, *_ in brute_force(inst, 160_000, 1_500_000, forbid)}
    rng = np.random.default_rng(0)
    draws = Counter(ids(C.uniform_feasible(inst, 160_000, 1_500_000, forbid, rng)[0]) for _ in range(60 * len(feasible)))
    assert set(draws) == feasible
    assert max(draws.values()) < 2.5 * min(draws.values())
    assert C.uniform_feasible(inst, 1, 1, forbid, rng, tries=50) is None


# ---------------------------------------------------------------------- the target, smoke-sized


def _snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.mark.slow
def test_claims_target_on_the_smoke_params(tmp_path):
    """Smoke zoo + claims at toy size (3 assemblies, 2 seeds, 1 random draw, 1 epoch): every section
    has its numbers and a verdict, the claims runs are in MLflow and the main summary is untouched."""
    for item in ("Snakefile", "workflow", "params", "dery"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    cfg = yaml.safe_load((tmp_path / "params" / "smoke.yaml").read_text())
    cfg["claims"] = {"assemblies_per_budget": 3, "tau_seeds": 2, "seeds": 2, "random_draws": 1, "bootstrap": 200,
                     "permutations": 200}
    (tmp_path / "params" / "claims.yaml").write_text(yaml.safe_dump(cfg))
    _snakemake(tmp_path, "claims", "--cores", "2", "--configfile", "params/claims.yaml")
    res = tmp_path / "results"
    md = (res / "claims.md").read_text()
    for section in ("## (a)", "## (b)", "## (c)", "## (d)", "## (e)", "## Summary"):
        assert section in md
    for proxy in ("naswot", "kta", "logme", "linear_probe", "jacov", "synflow"):
        assert f"| {proxy}" in md
    assert (res / "claims" / "cka_heatmaps.png").stat().st_size > 1000
    doc = json.loads((res / "claims" / "claims.json").read_text())
    assert doc["d"]["n_per_budget"]["tiny"] == 3 and doc["d"]["seeds"] == [0, 1]
    assert doc["c"]["tiny"]["pick"][2] == 2 and doc["c"]["tiny"]["scratch"][2] == 2
    assert set(doc["e"]["tiny"]) == {"pick", "cuts", "rand_cover", "rand_cuts"}
    rec = json.loads((res / "claims.metrics.json").read_text())
    assert rec["key"] == "claims" and rec["tags"]["stage"] == "claims" and "d_tau_naswot" in rec["metrics"]
    ranking = json.loads((res / "proxy" / "tiny" / "ranking.json").read_text())
    assert all(set(c["proxy_scores"]) >= {"naswot", "kta", "logme"} for c in ranking["candidates"])

    from dery.tracking import runs

    df = runs("sqlite:///" + str(res / "mlflow.db"), "smoke")
    claims = df[df["tags.stage"] == "claims"]
    assert "claims" in set(claims["tags.dery.key"]) and len(claims) > 10
    assert not any(k.startswith("claims/") for k in df[df["tags.stage"] == "finetune"]["tags.dery.key"])
    # nothing of the main run is recomputed by the claims jobs
    planned = _snakemake(tmp_path, "claims", "-n", "--cores", "1", "--configfile", "params/claims.yaml").stdout
    assert "Nothing to be done" in planned or "total" not in planned
