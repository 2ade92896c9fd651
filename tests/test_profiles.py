"""Snakemake profiles: `profiles/default` is the workflow profile every plain run loads (Snakemake looks for it
beside the Snakefile), and every profile a user may pick instead keeps its `rerun-incomplete`.

Why it matters: a job killed after its output landed but before Snakemake unmarked it leaves a complete-looking
file marked incomplete; without `rerun-incomplete` the next run stops with IncompleteFilesException instead of
finishing (CI hit exactly that window in test_faults when the profile sat in `workflow/profiles`, where a
top-level Snakefile's run never looks)."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import new_project, project_env

ROOT = Path(__file__).resolve().parents[1]


def dry_run(work: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "all", *args], cwd=work,
                          capture_output=True, text=True, env=project_env(work))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_a_plain_snakemake_run_loads_the_default_profile(tmp_path):
    work = new_project(tmp_path / "p")
    assert "Using workflow specific profile profiles/default" in dry_run(work, "--configfile", "params/smoke.yaml")


def test_dery_run_loads_it_too(tmp_path):
    work = new_project(tmp_path / "p")
    proc = subprocess.run([sys.executable, "-m", "dery.cli", "run", "params/smoke.yaml", "-n", "--quiet", "all"],
                          cwd=work, capture_output=True, text=True, env=project_env(work))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Using workflow specific profile profiles/default" in proc.stdout + proc.stderr


@pytest.mark.parametrize("profile", sorted(p.name for p in (ROOT / "profiles").iterdir()))
def test_every_profile_re_runs_jobs_a_kill_left_incomplete(profile):
    # --workflow-profile X replaces profiles/default, so each one must say it again
    config = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())
    assert config["rerun-incomplete"] is True
