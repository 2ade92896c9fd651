"""`snakemake bench` at toy size (params/smoke.yaml's `bench`: 3 assemblies, FT and FZ, 2 seeds, 1 epoch, two
assemblies in the stitching comparison) on top of a finished smoke run: it reuses every cached stage, writes the
dataset with one row per assembly x protocol x adapter variant and per baseline, scores every proxy, logs its run
(with the table) to MLflow, and a second call has nothing to do."""
import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import clone_project, project_env, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def benched(smoke_project, tmp_path_factory):
    work = clone_project(smoke_project, tmp_path_factory.mktemp("bench") / "p")
    proc = snakemake(work, "bench", "--cores", "2", "--configfile", "params/smoke.yaml")
    return work, proc.stdout + proc.stderr


def test_the_bench_reuses_the_pipeline_and_runs_only_its_own_jobs(benched):
    _, log = benched
    ran = {line.split("rule ")[1].rstrip(":").strip() for line in log.splitlines() if line.startswith("rule ")}
    assert ran <= {"bench_sample", "bench_finetune", "bench_scratch", "bench_zoo", "bench"}, ran


def test_the_dataset_has_a_row_per_assembly_protocol_and_adapter_and_per_baseline(benched):
    work, _ = benched
    df = pd.read_csv(work / "results" / "bench.csv")
    asm = df[df["kind"] == "assembly"]
    sample = json.loads((work / "results" / "bench" / "tiny" / "sample.json").read_text())
    n = len(sample["candidates"])
    assert n == min(3, sample["of"])
    assert len(asm[asm["stitching"] == "lstsq"]) == 2 * n                            # FT and FZ
    assert set(asm["stitching"]) == {"lstsq", "random", "trained"}
    assert len(asm[asm["stitching"] == "trained"]) == 1                              # FT only, the compared one
    assert len(df[df["kind"] == "zoo"]) == 3
    assert 1 <= len(df[df["kind"] == "scratch"]) <= n                                 # each proxy's pick, once
    for col in ("val_acc_seed0", "test_acc_seed0", "val_acc_seed1", "test_acc_seed1", "params_M", "MACs_M"):
        assert df[col].notna().all(), col
    proxies = [c for c in df if c.startswith("proxy_")]
    assert {"proxy_naswot", "proxy_logme", "proxy_params", "proxy_macs", "proxy_low_fidelity"} <= set(proxies)
    # a proxy that fails on an assembly (SynFlow's path sum can overflow) scores empty; most score every one
    assert asm["proxy_naswot"].notna().all() and asm[proxies].notna().mean().mean() > 0.9


def test_every_proxy_is_scored_with_intervals_and_the_report_documents_the_columns(benched):
    work, _ = benched
    doc = json.loads((work / "results" / "bench" / "bench.json").read_text())
    assert set(doc["scoring"]) == {"FT", "FZ"}
    assert set(doc["scoring"]["FT"]["proxies"]) == set(doc["proxies"])
    assert all(v > 0 for v in doc["seconds_per_candidate"].values())
    md = (work / "results" / "bench.md").read_text()
    for heading in ("## Proxies against fine-tuned accuracy", "## The pick", "## Stitching", "## The dataset"):
        assert heading in md
    assert "`test_acc_mean`" in md and doc["default"] in md
    for fig in ("proxy_vs_accuracy", "accuracy_vs_params", "stitching"):
        assert (work / "results" / "bench" / "figures" / f"{fig}.png").stat().st_size > 1000


def test_the_bench_run_and_its_table_are_in_mlflow(benched):
    work, _ = benched
    from mlflow.tracking import MlflowClient

    from dery.tracking import runs

    df = runs(f"sqlite:///{work / 'results' / 'mlflow.db'}", "smoke")
    bench = df[df["tags.dery.key"] == "bench"]
    assert len(bench) == 1
    client = MlflowClient(f"sqlite:///{work / 'results' / 'mlflow.db'}")
    names = {a.path for a in client.list_artifacts(bench["run_id"].iloc[0])}
    assert {"bench.csv", "bench.md", "bench.json"} <= names
    ft = df[df["tags.dery.key"].str.match(r"bench/[^/]+/slot")]
    assert len(ft) >= 12                                                            # the fine-tuning runs too,
    assert set(ft["tags.mlflow.source.name"]) == {"workflow/rules/bench.smk:bench_finetune"}  # with their jobs'
    assert ft["metrics.job.seconds"].notna().all()                                  # rule and benchmark figures


def test_a_second_call_has_nothing_to_do(benched):
    work, _ = benched
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "bench", "--configfile", "params/smoke.yaml"],
                          cwd=work, capture_output=True, text=True, env=project_env(work))
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
