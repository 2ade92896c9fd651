"""The smoke params run end to end through Snakemake; re-runs touch only what a change affects."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, clone_project, snakemake

pytestmark = pytest.mark.slow


def planned_jobs(work: Path, params_file: str) -> set[str]:
    out = snakemake(work, "-n", "--cores", "1", "--configfile", params_file).stdout
    if "Nothing to be done" in out:
        return set()
    table = out.split("Job stats:", 1)[1]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"total"}


def variant(work: Path, name: str, change) -> str:
    cfg = yaml.safe_load((work / "params" / "smoke.yaml").read_text())
    change(cfg)
    # key order is part of the params
    (work / "params" / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return f"params/{name}.yaml"


@pytest.fixture(scope="module")
def smoke(smoke_project, tmp_path_factory):
    """A private copy of the session's finished smoke run (these tests add params files and edit code)."""
    return clone_project(smoke_project, tmp_path_factory.mktemp("workflow") / "project")


def test_summary_answers_the_papers_question(smoke):
    import pandas as pd

    table = pd.read_csv(smoke / "results" / "summary.csv")
    assert set(table["kind"]) == {"assembly", "zoo", "scratch"}
    assemblies = table[table["kind"] == "assembly"]
    assert (len(assemblies) >= 1 and assemblies["FZ_test_acc"].between(0, 1).all()
            and assemblies["FT_test_acc"].notna().all())
    assert len(table[table["kind"] == "zoo"]) == 3
    assert (assemblies["params_M"] <= 3.0).all() and (assemblies["MACs_M"] <= 30).all(), "within the smoke budget"
    md = (smoke / "results" / "summary.md").read_text()
    assert "Equivalence sets" in md and "Kendall tau" in md


def test_summary_is_read_back_from_mlflow(smoke):
    from dery.tracking import runs, sqlite_uri

    df = runs(sqlite_uri(smoke / "results" / "mlflow.db"), "smoke")
    stages = set(df["tags.stage"])
    assert {"pretrain", "partition", "reassembly", "proxy", "finetune"} <= stages
    assert df["tags.dery.key"].is_unique


def test_every_run_carries_the_fingerprint_and_the_summary_prints_it(smoke):
    import json

    from dery import fingerprint as FP
    from dery.tracking import runs, sqlite_uri

    fp = json.loads((smoke / "results" / "fingerprint.json").read_text())
    assert set(fp["stages"]) == set(FP.STAGES)
    df = runs(sqlite_uri(smoke / "results" / "mlflow.db"), "smoke")
    assert set(df["tags.dery.fingerprint"]) == {FP.short(fp)}
    assert (set(df["tags.dery.fingerprint.zoo"]) == {fp["stages"]["zoo"]}
            and set(df["tags.dery.repro_mode"]) == {"strict"})
    assert FP.short(fp) in (smoke / "results" / "summary.md").read_text()


# The smoke run's fingerprint as measured on 2026-12-02 (AMD EPYC with AVX-512, and with the AVX2 kernels strict
# mode caps every CPU to: the same value). A change that moves any number of the smoke run moves it: if that change
# is meant, say so in its commit and update the value; if not, `dery fingerprint A.json B.json` names the stage.
SMOKE_FINGERPRINT = "1074da0652c128de"


def test_the_smoke_numbers_are_those_measured_before(smoke):
    import json

    from dery import fingerprint as FP

    fp = json.loads((smoke / "results" / "fingerprint.json").read_text())
    assert FP.short(fp) == SMOKE_FINGERPRINT, fp["stages"]


def test_every_job_left_a_log_and_a_benchmark(smoke):
    logs = list((smoke / "results" / "logs").rglob("*.log"))
    bench = list((smoke / "results" / "benchmarks").rglob("*.tsv"))
    assert len(logs) == len(bench) >= 20


def test_a_second_run_has_nothing_to_do(smoke):
    assert planned_jobs(smoke, "params/smoke.yaml") == set()


def test_changing_a_budget_reruns_only_reassembly_and_what_follows(smoke):
    f = variant(smoke, "budget", lambda c: c["reassembly"]["budgets"][0].update(params_m=2.5))
    jobs = planned_jobs(smoke, f)
    assert {"reassembly_ilp", "proxy_rank", "summarise"} <= jobs
    upstream = {"split_data", "pretrain_zoo", "extract_features", "similarity", "partition", "block_costs",
                "finetune_zoo"}
    assert not jobs & upstream, "a budget does not touch the zoo, features, similarity or the partition"
    assert "report_cka" not in jobs and "report_partition" not in jobs


def test_changing_k_reruns_partition_onward_but_not_features_or_similarity(smoke):
    f = variant(smoke, "k", lambda c: c["partition"].update(K=3))
    jobs = planned_jobs(smoke, f)
    assert {"partition", "block_costs", "reassembly_ilp"} <= jobs
    assert not jobs & {"split_data", "pretrain_zoo", "extract_features", "similarity", "finetune_zoo"}


def test_changing_the_probe_size_reruns_features_onward_but_not_the_zoo(smoke):
    f = variant(smoke, "probe", lambda c: c["features"].update(probe_images=100))
    jobs = planned_jobs(smoke, f)
    assert {"extract_features", "similarity", "partition"} <= jobs
    assert not jobs & {"split_data", "pretrain_zoo", "finetune_zoo"}


def test_editing_a_stage_module_reruns_that_stage(smoke):
    module = smoke / "dery" / "partition.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    jobs = planned_jobs(smoke, "params/smoke.yaml")
    assert "partition" in jobs and "pretrain_zoo" not in jobs


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--configfile", "params/smoke.yaml"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_stability_report_reruns_the_partition_with_other_seeds(smoke, monkeypatch):
    from dery.cli import main

    monkeypatch.chdir(smoke)
    assert main(["stability", "--params", "params/smoke.yaml", "--seeds", "0", "1", "--other", "results"]) == 0
    md = (smoke / "results" / "stability.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(rows) == 2 and "| 1.00 |" in rows[0], "seed 0 agrees with itself"
    assert "same blocks 1.00" in md and "Max |ΔCKA| 0.00e+00" in md, "a run compared with itself is identical"


def test_the_readmes_results_block_works_pasted_after_a_run(smoke_project, tmp_path):
    """The README's `dery results` block, as written, in a finished project whose default params are the smoke
    params (so "after a run" takes seconds, not the default's 20 minutes)."""
    work = clone_project(smoke_project, tmp_path / "project")
    (work / "params" / "default.yaml").write_text((work / "params" / "smoke.yaml").read_text())
    (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    text = (ROOT / "README.md").read_text().split("\n## Results from MLflow", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", text, re.S)
    proc = subprocess.run(["bash", "-e", "-c", block], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(work)})
    assert proc.returncode == 0, proc.stderr
    summary = (smoke_project / "results" / "summary.md").read_text()
    assert proc.stdout.count(summary) == 2, "both commands print the summary table"
    assert ((work / "results" / "tables" / "smoke.csv").is_file()
            and (work / "results" / "tables" / "mine.csv").is_file())
