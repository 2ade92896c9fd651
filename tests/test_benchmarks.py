"""The benchmark rows (benchmarks/run.py) import, run at a seconds-scale size where a row allows it, and render.

Nothing here is timed: the assertions are about the rows' structure and the exactness claims they make (the
prefix-shared NASWOT and final features equal the one-by-one ones; the Snakemake log and benchmark files parse).
"""
import importlib
import re
import textwrap

import pytest
import torch

from benchmarks import bench_pipeline, bench_proxy, bench_training
from benchmarks.common import Row, load_params
from benchmarks.run import ROWS, table


@pytest.fixture(scope="module")
def smoke_params():
    return load_params("params/smoke.yaml")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_row_module_imports_and_has_run():
    assert sorted(ROWS) == [1, 2, 3, 4, 5, 6, 7, 8]
    for name in ROWS.values():
        assert callable(importlib.import_module(f"benchmarks.{name}").run)


def test_prefix_shared_naswot_and_features_equal_the_plain_ones(smoke_params):
    from dery import proxy as PX
    from dery import stitching as ST

    infos = bench_proxy.deterministic(bench_proxy._zoo_infos(smoke_params, 16))
    space = bench_proxy.candidate_space(infos, 2)
    # candidates sharing a first block, and one running a model's consecutive blocks (an identity adapter)
    firsts = [c["blocks"][0]["model"] for c in space]
    assert len(space) > len(set(firsts))
    cands = space[:5]
    keys = [bench_proxy.prefix_keys(c["blocks"]) for c in cands]
    build = lambda i: ST.build(cands[i], infos, 10, "own", "lstsq", seed=i)[0]  # noqa: E731
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]
    assert bench_proxy.naswot_shared(build, keys, batches) == [PX.naswot(build(i), batches) for i in range(5)]
    feats = bench_proxy.final_features_shared(build, keys, batches)
    for i, f in enumerate(feats):
        assert (f == PX.final_features(build(i), batches)).all()


def test_prefix_keys_share_only_what_is_equal():
    blocks = [{"model": "a", "start": 1, "end": 2}, {"model": "b", "start": 3, "end": 4}]
    k1, k2 = bench_proxy.prefix_keys(blocks, seed=1), bench_proxy.prefix_keys(blocks, seed=2)
    assert k1 == k2                                  # least-squares adapters: same blocks, same weights
    r1, r2 = (bench_proxy.prefix_keys(blocks, init="random", seed=s) for s in (1, 2))
    assert r1[0] == r2[0] and r1[1] != r2[1]         # a random adapter depends on the candidate's seed
    f1, f2 = (bench_proxy.prefix_keys(blocks, stem="fresh", seed=s) for s in (1, 2))
    assert f1[0] != f2[0]                            # so does a fresh stem


def _fake_project(tmp_path):
    (tmp_path / ".snakemake" / "log").mkdir(parents=True)
    log = textwrap.dedent("""\
        Assuming unrestricted shared filesystem usage.
          Date: 2026-01-01 10:00:00
          Command: .venv/bin/snakemake --cores all
          Config file(s): ['params/default.yaml']
        [Thu Jan 01 10:00:01 2026]
        localrule split_data:
            output: results/data/splits.json
            jobid: 4
            benchmark: results/benchmarks/split_data.tsv
        [Thu Jan 01 10:00:05 2026]
        Finished jobid: 4 (Rule: split_data)
        1 of 3 steps (33%) done
        [Thu Jan 01 10:00:05 2026]
        localrule pretrain_zoo:
            output: results/zoo/a.safetensors, results/zoo/a.json
            jobid: 2
            benchmark: results/benchmarks/pretrain_zoo/a.tsv
        [Thu Jan 01 10:00:06 2026]
        localrule summarise:
            output: results/summary.md
            jobid: 1
        [Thu Jan 01 10:00:50 2026]
        Finished jobid: 2 (Rule: pretrain_zoo)
        [Thu Jan 01 10:01:00 2026]
        Finished jobid: 1 (Rule: summarise)
        3 of 3 steps (100%) done
        """)
    (tmp_path / ".snakemake" / "log" / "2026-01-01T100000.000000.snakemake.log").write_text(log)
    touch = log.replace("--cores all", "--touch --cores 1").replace("10:00", "11:00")
    (tmp_path / ".snakemake" / "log" / "2026-01-01T110000.000000.snakemake.log").write_text(touch)
    bench = tmp_path / "results" / "benchmarks"
    (bench / "pretrain_zoo").mkdir(parents=True)
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (bench / "split_data.tsv").write_text(head + "4.00\t0:00:04\t100.5\t1\t1\t1\t0\t0\t50\t3.5\n")
    (bench / "pretrain_zoo" / "a.tsv").write_text(head + "45.00\t0:00:45\t1500.0\t1\t1\t1\t0\t0\t90\t40.0\n")
    return tmp_path


def test_pipeline_row_reads_the_last_cold_run(tmp_path):
    project = _fake_project(tmp_path)
    log = bench_pipeline.latest_complete_log(project)
    assert log.command.endswith("--cores all")       # the --touch run ran nothing and is skipped
    assert log.seconds == 60 and [j.rule for j in log.jobs] == ["split_data", "pretrain_zoo", "summarise"]
    rules = {r["rule"]: r for r in bench_pipeline.per_rule(log.jobs)}
    assert rules["pretrain_zoo"]["s"] == 45 and rules["pretrain_zoo"]["rss"] == 1500
    assert rules["summarise"]["s"] == 54 and rules["summarise"]["timed_by"] == {"log"}
    res = bench_pipeline.run(True, smoke=False, dry_run=False, project=project)
    assert res.rows[0].row == "6" and res.rows[0].dery == "60.00 s" and res.rows[0].met == "yes"
    assert "| pretrain_zoo | 1 | 45 | 40 | 1500 MB | benchmark |" in res.notes[0]


def test_budget_change_keeps_the_params_file_order(smoke_params):
    changed, what = bench_pipeline.budget_changed(smoke_params)
    assert list(changed) == list(smoke_params) and "params_m" in what
    assert changed["reassembly"]["budgets"][0]["params_m"] > smoke_params["reassembly"]["budgets"][0]["params_m"]


def test_cheap_rows_run_tiny_and_the_table_has_all_seven_rows(smoke_params, tmp_path):
    rows = bench_proxy.run(True, smoke_params, tiny=True).rows
    rows += bench_pipeline.run(True, smoke=False, dry_run=False, project=_fake_project(tmp_path)).rows
    rows += bench_training.run(True, smoke_params, tiny=True).rows
    assert {r.row for r in rows} == {"5", "6", "7"}
    assert "same scores: yes" in rows[1].what
    # rows 1-4 take minutes even in --quick mode: represented here by their row numbers only
    rows += [Row(str(n), "not run in the tests", "-", "-", "-", "-", "-") for n in (1, 2, 3, 4)]
    md = table(rows)
    assert {int(m) for m in re.findall(r"^\| (\d) \|", md, flags=re.M)} == set(range(1, 8))
    assert all(line.count("|") == 8 for line in md.splitlines())


def test_row_8_strict_mode_is_identical_across_instruction_sets_and_costs_are_measured():
    from benchmarks import bench_repro

    res = bench_repro.run(quick=True, params={}, tiny=True)
    strict = [r for r in res.rows if r.what.startswith("... strict mode")][0]
    assert strict.met == "yes", strict
    costs = [r for r in res.rows if r.what.startswith("strict mode cost")]
    assert len(costs) == 3 and all(r.ratio.endswith("x") for r in costs)
