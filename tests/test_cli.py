"""`dery results`: the paper-style tables, read from MLflow (latest run per key), as Markdown and CSV.

The store here is built from hand-written records with known numbers (three assemblies whose
proxy order matches FT accuracy and reverses FZ accuracy), so every printed value is checked.
"""
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dery import cli
from dery import tracking as T

EXPERIMENT = "tables"
#                 rank, proxy, FZ acc, FT acc, params, MACs
ASSEMBLIES = [(0, 300.0, 0.50, 0.90, 1.5e6, 20e6),
              (1, 200.0, 0.60, 0.80, 1.2e6, 25e6),
              (2, 100.0, 0.70, 0.70, 0.9e6, 10e6)]
ZOO = [("resnet_A", 4.9e6, 22e6, 0.85), ("mobile_B", 0.6e6, 0.9e6, 0.75)]


def finetune_record(key, kind, budget, protocol, name, acc, params, macs, proxy=None):
    metrics = {"test_acc": acc, "val_acc": acc - 0.01, "params": params, "macs": macs}
    if proxy is not None:
        metrics["proxy_score"] = proxy
    return T.record(key, {"stage": "finetune", "kind": kind, "budget": budget, "protocol": protocol, "name": name,
                          "blocks": "a[1-2] > b[3-4]"}, {"lr": 0.001, "epochs": 2}, metrics,
                    {"epoch_val_acc": [acc / 2, acc], "epoch_train_loss": [2.0, 1.0]})


def records(ft_rank0=0.90):
    recs = [T.record("partition",
                     {"stage": "partition", "set0": "a[l1..l2]; b[s0..s1]", "set1": "a[l3..l4]; b[s2..s3]"},
                     {"K": 2}, {"stage_alignment": 1.0}),
            T.record("reassembly/small", {"stage": "reassembly", "budget": "small"},
                     {"budget": {"name": "small", "params_m": 2.0, "macs_m": 30}}, {"candidates": 3})]
    for rank, proxy, fz, ft, params, macs in ASSEMBLIES:
        for protocol, acc in (("FZ", fz), ("FT", ft_rank0 if rank == 0 else ft)):
            recs.append(finetune_record(f"finetune/small/rank{rank}/{protocol}", "assembly", "small", protocol,
                                        f"rank{rank}:small-c{rank}", acc, params, macs, proxy))
    recs.append(finetune_record("finetune/small/scratch/FT", "scratch", "small", "FT", "scratch:small-c0", 0.40,
                                1.5e6, 20e6))
    for name, params, macs, acc in ZOO:
        recs.append(finetune_record(f"finetune/zoo/{name}/FT", "zoo", "zoo", "FT", name, acc, params, macs))
    return recs


@pytest.fixture(scope="module")
def built_store(tmp_path_factory) -> Path:
    """Created once (MLflow's schema set-up costs seconds); tests that add runs work on a copy."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    T.ingest(records(), T.sqlite_uri(db), EXPERIMENT, {"dery.params_hash": "abc123", "dery.git_commit": "deadbee"})
    return db


@pytest.fixture
def store(built_store, tmp_path) -> str:
    db = tmp_path / "mlflow.db"
    shutil.copyfile(built_store, db)
    return T.sqlite_uri(db)


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def dery_results(*args, cwd=None) -> subprocess.CompletedProcess:
    """The installed console script (pyproject's [project.scripts]), as a user runs it."""
    exe = Path(sys.executable).parent / "dery"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dery.cli"]
    return subprocess.run([*cmd, "results", *args], capture_output=True, text=True, cwd=cwd)


def test_results_prints_a_paper_table_per_budget_and_writes_the_csv(store, tmp_path):
    csv = tmp_path / "out" / "tables.csv"
    proc = dery_results("--experiment", EXPERIMENT, "--tracking-uri", store, "--csv", str(csv))
    assert proc.returncode == 0, proc.stderr
    md = proc.stdout
    assert "## Budget `small`: params <= 2 M, MACs <= 30 M" in md
    header = next(line for line in md.splitlines() if line.startswith("| network"))
    for col in ("params (M)", "MACs (M)", "FLOPs (M)", "NASWOT", "FZ top-1 (%)", "FT top-1 (%)", "fits budget"):
        assert col in header
    assert "one multiply-accumulate as 1" in md and "FLOPs = 2 x MACs" in md, "the table says MACs vs FLOPs"
    rows = [line for line in md.splitlines() if line.startswith(("| rank", "| scratch", "| resnet_A", "| mobile_B"))]
    assert [cells(r)[0] for r in rows] == ["rank0:small-c0", "rank1:small-c1", "rank2:small-c2",
                                                    "scratch:small-c0", "mobile_B", "resnet_A"]
    assert cells(rows[0])[3:] == ["1.5", "20", "40", "300.0", "50.0", "90.0", "yes"]
    assert cells(rows[-1])[-1] == "no", "a 4.9 M zoo model does not fit a 2 M budget"
    table = pd.read_csv(csv)
    assert len(table) == 6 and set(table["kind"]) == {"assembly", "scratch", "zoo"}
    assert table.loc[table["name"] == "rank0:small-c0", "FT_test_acc"].item() == 0.90


def test_results_report_the_proxys_kendall_tau_and_the_equivalence_sets(store, tmp_path):
    md = cli.results(None, EXPERIMENT, store, str(tmp_path / "t.csv"))
    assert "FT +1.000 (n=3)" in md, "proxy order = FT accuracy order"
    assert "FZ -1.000 (n=3)" in md, "proxy order = reversed FZ accuracy order"
    assert "## Equivalence sets (stage alignment 1.00)" in md
    assert "- set 0: a[l1..l2]; b[s0..s1]" in md and "- set 1: a[l3..l4]; b[s2..s3]" in md


def test_reingesting_adds_no_run_and_a_rerun_replaces_its_row(store, tmp_path):
    assert T.ingest(records(), store, EXPERIMENT) == {"added": 0, "skipped": len(records())}
    T.ingest(records(ft_rank0=0.95), store, EXPERIMENT)  # rank0 FT re-run with a new result
    md = cli.results(None, EXPERIMENT, store, str(tmp_path / "t.csv"))
    assert md.count("| rank0:small-c0 |") == 1 and "| 95.0 |" in md
    T.ingest(records(ft_rank0=0.90), store, EXPERIMENT)  # and back: the latest run wins, not the first
    md = cli.results(None, EXPERIMENT, store, str(tmp_path / "t.csv"))
    assert md.count("| rank0:small-c0 |") == 1 and "| 90.0 |" in md and "| 95.0 |" not in md
    runs = T.runs(store, EXPERIMENT)
    assert runs["tags.dery.key"].is_unique and len(runs) == len(records())


def test_runs_are_named_and_tagged_deterministically(store):
    runs = T.runs(store, EXPERIMENT).set_index("tags.dery.key")
    run = runs.loc["finetune/small/rank1/FZ"]
    assert run["tags.mlflow.runName"] == "finetune-small-rank1-FZ"
    assert (run["tags.stage"], run["tags.budget"], run["tags.protocol"]) == ("finetune", "small", "FZ")
    assert (run["tags.dery.params_hash"], run["tags.dery.git_commit"]) == ("abc123", "deadbee")
    assert runs.loc["finetune/small/rank1/FT", "metrics.epoch_val_acc"] == 0.80, "last step of the curve"


def test_the_experiment_comes_from_the_params_file(store, tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(f"name: {EXPERIMENT}\ntracking: {{uri: '{store}'}}\n")
    md = cli.results(str(params), None, None, str(tmp_path / "t.csv"))
    assert f"experiment `{EXPERIMENT}`" in md and store in md


def test_the_tracking_uri_env_var_overrides_the_params_file(monkeypatch):
    monkeypatch.delenv(T.URI_ENV, raising=False)
    assert T.resolve_uri(None) == "sqlite:///results/mlflow.db"
    assert T.resolve_uri("http://h:5000") == "http://h:5000"
    monkeypatch.setenv(T.URI_ENV, "http://127.0.0.1:5001")
    assert T.resolve_uri("http://h:5000") == "http://127.0.0.1:5001"


def test_a_missing_store_or_experiment_is_one_message_naming_the_fix(store, tmp_path, capsys):
    missing = tmp_path / "none.db"
    assert cli.main(["results", "--experiment", EXPERIMENT, "--tracking-uri", f"sqlite:///{missing}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dery results: no MLflow store at") and "dvc pull" in err and "Traceback" not in err
    assert not missing.exists(), "reading must not create an empty store"
    assert cli.main(["results", "--experiment", "nope", "--tracking-uri", store]) == 1
    err = capsys.readouterr().err
    assert "experiment 'nope' not found" in err and EXPERIMENT in err and "--experiment" in err


def test_the_proxy_tau_is_computed_within_budgets_never_across_them():
    """Each budget's candidates are ranked separately: two budgets with 2 assemblies each give no τ (pooling them
    into 4 points would), and budgets with 3 or more give the assembly-weighted mean of their own τ."""
    from dery import evaluation as E

    def table(budgets):
        rows = [{"kind": "assembly", "budget": b, "proxy": p, "FZ_test_acc": a, "FT_test_acc": a}
                for b, pts in budgets.items() for p, a in pts]
        return pd.DataFrame(rows)

    two_each = table({"small": [(1, 0.2), (2, 0.1)], "large": [(3, 0.9), (4, 0.8)]})
    assert math.isnan(E.proxy_correlation(two_each)["kendall_tau_FT"]) and E.proxy_correlation(two_each)["n_FT"] == 4
    mixed = table({"small": [(1, 0.1), (2, 0.2), (3, 0.3)], "large": [(1, 0.4), (2, 0.3), (3, 0.2), (4, 0.1)]})
    assert E.proxy_correlation(mixed)["kendall_tau_FT"] == pytest.approx((3 * 1.0 + 4 * -1.0) / 7)


def test_dery_run_hands_over_to_snakemake_with_the_params_file_last():
    """Snakemake's --configfile takes every word after it: a target placed after it would be read as a file."""
    cmd = cli.snakemake_command("params/smoke.yaml", ["claims", "-n"])
    assert cmd[1:] == ["-m", "snakemake", "--cores", "all", "claims", "-n", "--configfile", "params/smoke.yaml"]
    for chosen in (["--cores", "1"], ["-c2"], ["--cores=3"], ["-j", "4"]):
        assert "all" not in cli.snakemake_command(None, chosen), chosen
    assert cli.snakemake_command(None, ["--", "-n"])[-1] == "-n"


def test_dery_run_refuses_a_dotted_config_override_before_snakemake_starts(capsys):
    assert cli.main(["run", "params/smoke.yaml", "--config", "partition.K=4"]) == 2
    assert "top-level KEY=VALUE pairs" in capsys.readouterr().err
