"""Every fix the package advises works when followed literally, and ends with the complete, identical result.

Snakemake alone does not notice either fault below: an intermediate file whose products all exist is never
remade ("Nothing to be done"), and the MLflow store is no rule's output."""
import re
import shlex
import subprocess
import sys

import pandas as pd
import pytest
from conftest import clone_project, project_env, snakemake

pytestmark = pytest.mark.slow
RUN = ("--cores", "2", "--configfile", "params/smoke.yaml")


def same_result(work, reference):
    proc = subprocess.run([sys.executable, "-m", "dery.cli", "fingerprint", str(work / "results/fingerprint.json"),
                           str(reference / "results/fingerprint.json")], capture_output=True, text=True,
                          env=project_env(work))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # every stage's content hash is equal
    pd.testing.assert_frame_equal(pd.read_csv(work / "results/summary.csv"),
                                  pd.read_csv(reference / "results/summary.csv"))


def test_a_corrupted_cka_matrix_is_rebuilt_by_the_command_its_error_gives(smoke_project, tmp_path):
    work = clone_project(smoke_project, tmp_path / "project")
    sim = sorted((work / "results" / "similarity").glob("*.npz"))[0]
    data = bytearray(sim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sim.write_bytes(bytes(data))
    failed = snakemake(work, *RUN, check=False)
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0 and "does not match the checksum written with it" in out, out[-3000:]
    advice = re.search(r"Rebuild it, and every result made from it, with `([^`]+)`", out).group(1)
    assert advice == f"snakemake --cores all --forcerun {sim.relative_to(work)} --configfile params/smoke.yaml"
    words = shlex.split(advice)
    followed = subprocess.run([sys.executable, "-m", *words], cwd=work, capture_output=True, text=True,
                              env=project_env(work))
    assert followed.returncode == 0, followed.stderr[-3000:]
    same_result(work, smoke_project)
    assert "Nothing to be done" in snakemake(work, *RUN, "-n").stdout


def test_a_deleted_mlflow_store_is_rebuilt_from_the_records_by_the_next_run(smoke_project, tmp_path):
    work = clone_project(smoke_project, tmp_path / "project")
    (work / "results" / "mlflow.db").unlink()
    proc = snakemake(work, *RUN)
    assert "the MLflow store results/mlflow.db is missing; it is rebuilt from the results/**/*.metrics.json" \
        in proc.stderr
    assert (work / "results" / "mlflow.db").stat().st_size > 0
    table = subprocess.run([sys.executable, "-m", "dery.cli", "results", "--params", "params/smoke.yaml"], cwd=work,
                           capture_output=True, text=True, env=project_env(work))
    assert table.returncode == 0, table.stderr
    assert table.stdout == (smoke_project / "results" / "summary.md").read_text()
    assert "Nothing to be done" in snakemake(work, *RUN, "-n").stdout


def test_an_emptied_mlflow_store_is_rebuilt_too(smoke_project, tmp_path):
    work = clone_project(smoke_project, tmp_path / "project")
    (work / "results" / "mlflow.db").write_bytes(b"")
    proc = snakemake(work, *RUN)
    assert "the MLflow store results/mlflow.db is empty; it is rebuilt" in proc.stderr
    same_result(work, smoke_project)
