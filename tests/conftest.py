"""Shared fixtures: one finished smoke run per test session, reused read-only by the workflow tests."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_ITEMS = ("Snakefile", "workflow", "profiles", "params", "dery")


def new_project(dest: Path) -> Path:
    """A fresh copy of the workflow (rules, params, library sources) to run Snakemake in."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in PROJECT_ITEMS:
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    return dest


def project_env(work: Path) -> dict:
    """Jobs import the project copy's own ``dery`` (not the checkout's), so the copy is self-contained."""
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def snakemake(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=work, capture_output=True, text=True,
                          env=project_env(work))
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory) -> Path:
    """params/smoke.yaml run to completion once; tests must not modify it (copy it with clone_project)."""
    work = new_project(tmp_path_factory.mktemp("smoke"))
    snakemake(work, "--cores", "2", "--configfile", "params/smoke.yaml")
    return work


def clone_project(src: Path, dest: Path) -> Path:
    """Copy a finished project with its outputs, timestamps and Snakemake metadata."""
    shutil.copytree(src, dest, symlinks=True)
    return dest
