"""Faults lose nothing and change nothing: a run killed (SIGKILL) during pretraining, feature
extraction and fine-tuning, then restarted with the same command, ends with exactly the
results of an uninterrupted run; and two runs of the same params agree exactly on CPU."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import new_project, project_env, snakemake

pytestmark = pytest.mark.slow
COMMAND = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "params/smoke.yaml"]


def run_until(work: Path, ready, timeout: float = 600) -> bool:
    """Start the workflow; SIGKILL its whole process group once ``ready()`` holds. True if killed."""
    proc = subprocess.Popen(COMMAND, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=project_env(work))
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.2)
    proc.wait()
    return False


def has_log(work: Path, pattern: str, text: str = "") -> bool:
    return any(text in p.read_text(errors="ignore") for p in work.glob(pattern))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    work = new_project(tmp_path_factory.mktemp("interrupted"))
    kills = [run_until(work, lambda: has_log(work, "results/logs/pretrain_zoo/*.log", "epoch 1/1")),
             run_until(work, lambda: has_log(work, "results/logs/extract_features/*.log")),
             run_until(work, lambda: has_log(work, "results/logs/finetune/*/rank*_F*.log", "epoch 1/1"))]
    proc = snakemake(work, *COMMAND[3:])  # the same command the user ran: it finishes
    return work, kills, proc


def load(work: Path, rel: str):
    """A result file without its wall-clock timings (the only fields allowed to differ)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if "seconds" not in k and "per_second" not in k}
        return [strip(v) for v in x] if isinstance(x, list) else x
    return strip(json.loads((work / rel).read_text()))


def test_each_kill_hit_a_running_job(interrupted):
    _, kills, _ = interrupted
    assert kills == [True, True, True]


def test_the_restarted_run_matches_an_uninterrupted_run_exactly(interrupted, smoke_project):
    work, _, _ = interrupted
    for rel in ("results/partition/equivalence_sets.json", "results/reassembly/tiny/candidates.json",
                "results/proxy/tiny/ranking.json"):
        assert load(work, rel) == load(smoke_project, rel), rel
    cols = ["kind", "budget", "name", "params_M", "MACs_M", "proxy", "FZ_test_acc", "FT_test_acc"]
    a = pd.read_csv(work / "results" / "summary.csv")
    b = pd.read_csv(smoke_project / "results" / "summary.csv")
    pd.testing.assert_frame_equal(a[[c for c in cols if c in a]], b[[c for c in cols if c in b]])


def test_no_partial_file_is_left_behind(interrupted):
    work, _, _ = interrupted
    leftovers = [p for p in (work / "results").rglob("*") if p.name.endswith((".tmp", ".tmp.npz", ".resume.pt"))]
    assert leftovers == []
