"""DVC around the Snakemake pipeline, as a team uses it, with the real `git` and `dvc` binaries.

Alice reproduces the smoke config with `dvc repro` and pushes; Bob clones, restores with `dery restore`
and Snakemake has nothing left to do; a checkpoint whose content does not match dvc.lock is refused;
two commits of params/ compare with `dvc params diff` / `dvc metrics diff`. All clones sit beside
each other, so the default remote of .dvc/config (a directory beside the checkout) is shared.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TRAINING_RULES = {"pretrain_zoo", "finetune_assembly", "finetune_zoo", "finetune_scratch"}


def env_for(work: Path) -> dict:
    """The project's tools on PATH (dvc runs the stage commands `snakemake`, `dery`), its own dery imported."""
    env = {k: v for k, v in os.environ.items() if k != "DERY_TRACKING_URI"}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(work),
            "GIT_AUTHOR_NAME": "dery test", "GIT_AUTHOR_EMAIL": "test@dery.invalid",
            "GIT_COMMITTER_NAME": "dery test", "GIT_COMMITTER_EMAIL": "test@dery.invalid"}


def sh(work: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=work, env=env_for(work), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def planned_jobs(work: Path) -> set[str]:
    out = sh(work, str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", "params/smoke.yaml").stdout
    if "Nothing to be done" in out:
        return set()
    return ({m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", out.split("Job stats:", 1)[1], re.MULTILINE)}
            - {"total"})


def dvc_outs() -> list[str]:
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["reproduce"]
    return [next(iter(o)) if isinstance(o, dict) else o for kind in ("outs", "metrics", "plots") for o in stage[kind]]


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> Path:
    """A bare origin holding the working tree as one commit, with params.yaml choosing the smoke config."""
    base = tmp_path_factory.mktemp("team")
    alice = base / "alice"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (alice / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, alice / f)
    params = alice / "params.yaml"
    params.write_text(params.read_text().replace("params_file: params/default.yaml", "params_file: params/smoke.yaml"))
    sh(alice, "git", "init", "-q", "-b", "main")
    sh(alice, "git", "add", "-A")
    sh(alice, "git", "commit", "-q", "-m", "dery, smoke params")
    sh(base, "git", "clone", "-q", "--bare", str(alice), str(base / "origin.git"))
    sh(alice, "git", "remote", "add", "origin", str(base / "origin.git"))
    return base


def readme_blocks(section: str) -> list[str]:
    """The bash blocks of one README section, as a user would paste them."""
    text = (ROOT / "README.md").read_text().split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def paste(work: Path, block: str) -> subprocess.CompletedProcess:
    """A README block in a fresh bash (stopping at the first failing line), without this test run's venv on PATH:
    the block itself must put the tools there. PYTHONPATH only makes the copy import its own dery."""
    env = {**env_for(work), "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)}
    proc = subprocess.run(["bash", "-e", "-c", block], cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"README block failed in {work} ({proc.returncode}):\n{block}\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


VENV = BIN.parent  # a clone links this test run's environment instead of installing one (scripts/setup.sh, minutes)


@pytest.fixture(scope="module")
def alice(team) -> Path:
    """The README's machine-1 block, pasted as written: `dvc repro` of the smoke config, committed, pushed."""
    work = team / "alice"
    (work / ".venv").symlink_to(VENV)
    sh(work, "git", "fetch", "-q", "origin")
    sh(work, "git", "branch", "-q", "--set-upstream-to", "origin/main")
    proc = paste(work, readme_blocks("Teams")[0])
    (team / "alice-repro.log").write_text(proc.stdout + proc.stderr)
    return work


@pytest.fixture(scope="module")
def bob(alice, team) -> Path:
    """The README's machine-2 block, pasted as written, its set-up replaced by a link to this environment."""
    block = readme_blocks("Teams")[1]
    first = block.splitlines()[0]
    assert first == "git clone YOUR_REMOTE dery && cd dery && bash scripts/setup.sh"
    block = block.replace(first, f"git clone -q {team / 'origin.git'} bob && cd bob && ln -s {VENV} .venv")
    proc = paste(team, block)
    (team / "bob-restore.log").write_text(proc.stdout + proc.stderr)
    return team / "bob"


def test_dvc_repro_runs_the_params_file_chosen_in_params_yaml(alice):
    lock = yaml.safe_load((alice / "dvc.lock").read_text())["stages"]["reproduce"]
    assert lock["cmd"].startswith("snakemake --cores all --configfile params/smoke.yaml")
    assert lock["params"]["params.yaml"] == {"params_file": "params/smoke.yaml"}
    assert lock["params"]["params/smoke.yaml"]["name"] == "smoke", "every key of the smoke params is a dependency"
    assert "resources/fashion-mnist" in {d["path"] for d in lock["deps"]}, "the dataset is a versioned dependency"
    assert json.loads((alice / "results" / "metrics.json").read_text())["best"]["tiny"] > 0
    assert (alice / "results" / "report.html").stat().st_size > 100_000
    assert sh(alice, str(BIN / "dvc"), "status").stdout.strip() == "Data and pipelines are up to date."


def test_every_result_file_is_versioned_by_dvc_or_git(alice):
    outs = dvc_outs()
    tracked = set(sh(alice, "git", "ls-files", "results").stdout.split())
    stray = [str(f.relative_to(alice)) for f in (alice / "results").rglob("*") if f.is_file()
             and str(f.relative_to(alice)) not in tracked and f.name != ".gitignore"
             and not any(str(f.relative_to(alice)) == o or str(f.relative_to(alice)).startswith(o + "/") for o in outs)]
    assert not stray, f"results not in dvc.yaml's outputs (a clone would recompute them): {stray}"
    assert {"results/metrics.json", "results/summary.md", "results/summary.csv", "results/README.md"} <= tracked


def test_dvc_push_stores_the_zoo_and_the_fine_tuned_models(alice, team):
    remote = team / "dery-dvc-remote"
    models = sorted((alice / "results" / "zoo").glob("*.safetensors")) + \
        sorted((alice / "results" / "finetune").rglob("*.safetensors"))
    assert len(models) >= 3 + 4, "3 zoo checkpoints and 4 fine-tuned assemblies (2 candidates x FZ/FT)"
    for f in models:
        h = md5(f)
        assert (remote / "files" / "md5" / h[:2] / h[2:]).is_file(), f"{f.relative_to(alice)} is not in the remote"


def test_a_fresh_clone_pulls_everything_and_retrains_nothing(alice, bob, team):
    assert "jobs' outputs marked current for params/smoke.yaml" in (team / "bob-restore.log").read_text()
    for f in sorted((alice / "results" / "zoo").glob("*.safetensors")) + \
            sorted((alice / "results" / "finetune").rglob("*.safetensors")):
        assert md5(bob / f.relative_to(alice)) == md5(f), f"{f.relative_to(alice)} restored byte for byte"
    assert planned_jobs(bob) == set(), "after `dery restore` Snakemake has nothing to redo"
    # the MLflow store came along: the tables print in the clone as they did where they were made
    table = sh(bob, str(BIN / "dery"), "results", "--params", "params/smoke.yaml").stdout
    assert table == (alice / "results" / "summary.md").read_text()


def test_without_restore_the_pulled_timestamps_would_retrain(alice, team):
    """Why `dery restore` exists: `dvc pull` alone leaves Snakemake to judge by checkout timestamps."""
    work = team / "carol"
    sh(team, "git", "clone", "-q", str(team / "origin.git"), str(work))
    sh(work, str(BIN / "dvc"), "pull", "-q")
    zoo = sorted((work / "results" / "zoo").glob("*.safetensors"))
    for f in (work / "results").rglob("*"):  # what a checkout in another order leaves: inputs newer than outputs
        if f.is_file():
            os.utime(f, (1_700_000_000, 1_700_000_000))
    for f in [work / "results" / "data" / "splits.json", *zoo]:
        os.utime(f, None)
    assert planned_jobs(work) & TRAINING_RULES, "Snakemake alone would retrain"
    sh(work, str(BIN / "dery"), "restore", "--no-pull")
    assert planned_jobs(work) == set()


def test_a_corrupted_checkpoint_is_detected_and_never_marked_current(alice, bob):
    ckpt = sorted((bob / "results" / "zoo").glob("*.safetensors"))[0]
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[:-64] + bytes(64))  # same size, last 64 bytes zeroed
    proc = sh(bob, str(BIN / "dery"), "verify", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"file: {ckpt.relative_to(bob)} (modified)" in proc.stderr and "dvc checkout --force" in proc.stderr
    proc = sh(bob, str(BIN / "dery"), "restore", "--no-pull", check=False)
    assert proc.returncode == 1 and "NOT marked current" in proc.stderr
    assert "modified" in sh(bob, str(BIN / "dvc"), "status").stdout
    sh(bob, str(BIN / "dvc"), "checkout", "--force", "results/zoo")  # the fix the message names
    assert ckpt.read_bytes() == good
    sh(bob, str(BIN / "dery"), "verify")


def test_a_corrupted_object_in_the_remote_is_refused_on_pull(alice, team):
    ckpt = sorted((alice / "results" / "zoo").glob("*.safetensors"))[0]
    h = md5(ckpt)
    obj = team / "dery-dvc-remote" / "files" / "md5" / h[:2] / h[2:]
    saved = obj.read_bytes()
    work = team / "dave"
    try:
        obj.chmod(0o644)
        obj.write_bytes(saved[:-64] + bytes(64))
        sh(team, "git", "clone", "-q", str(team / "origin.git"), str(work))
        proc = sh(work, str(BIN / "dery"), "restore", check=False)
        assert proc.returncode == 1 and "dvc pull failed" in proc.stderr
        assert not (work / ckpt.relative_to(alice)).exists(), "the corrupted checkpoint was not checked out"
        assert not (work / ".snakemake" / "metadata").exists(), "nothing was marked current"
    finally:
        obj.write_bytes(saved)


def test_params_and_metrics_diff_between_two_commits_of_params(alice):
    zoo_mtimes = {f.name: f.stat().st_mtime for f in (alice / "results" / "zoo").glob("*.safetensors")}
    smoke = alice / "params" / "smoke.yaml"
    cfg = yaml.safe_load(smoke.read_text())
    old_lr = cfg["finetune"]["lr"]
    # edit the one value in place, as a person would (Snakemake compares dict params in key order,
    # so re-dumping the file sorted would look like a change to every rule)
    smoke.write_text("".join(re.sub(r"\blr: [0-9.e-]+", "lr: 0.003", line) if line.startswith("finetune:") else line
                             for line in smoke.read_text().splitlines(keepends=True)))
    cfg["finetune"]["lr"] = 0.003
    assert yaml.safe_load(smoke.read_text()) == cfg
    repro = sh(alice, str(BIN / "dvc"), "repro")
    ran = set(re.findall(r"^(?:local)?rule (\w+):", repro.stdout + repro.stderr, re.MULTILINE))
    assert "finetune_assembly" in ran and "pretrain_zoo" not in ran, "persist: Snakemake re-ran only what lr affects"
    assert {f.name: f.stat().st_mtime for f in (alice / "results" / "zoo").glob("*.safetensors")} == zoo_mtimes
    sh(alice, "git", "commit", "-q", "-am", "smoke: finetune lr 0.003")

    params = json.loads(sh(alice, str(BIN / "dvc"), "params", "diff", "HEAD~1", "HEAD", "--json").stdout)
    assert list(params) == ["params/smoke.yaml"] and list(params["params/smoke.yaml"]) == ["finetune.lr"]
    assert (params["params/smoke.yaml"]["finetune.lr"]["old"], params["params/smoke.yaml"]["finetune.lr"]["new"]) \
        == (old_lr, 0.003)
    metrics = json.loads(sh(alice, str(BIN / "dvc"), "metrics", "diff", "HEAD~1", "HEAD", "--json").stdout)
    best = metrics["results/metrics.json"]["best.tiny"]
    assert best["old"] != best["new"], "the best assembly's accuracy changed with the learning rate"
    text = sh(alice, str(BIN / "dvc"), "metrics", "diff", "HEAD~1", "HEAD").stdout
    assert "best.tiny" in text


def test_the_committed_dvc_lock_records_the_committed_tables_and_params():
    """dvc.lock is committed with the results, so `dvc metrics diff` / `dvc params diff` between commits compare
    what made the committed tables."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]["reproduce"]
    outs = {o["path"]: o["md5"] for kind in ("outs",) for o in lock[kind]}
    for rel in ("results/metrics.json", "results/summary.md", "results/summary.csv", "results/fingerprint.json"):
        assert outs[rel] == md5(ROOT / rel), f"{rel} differs from the dvc.lock committed with it"
    assert lock["params"]["params.yaml"] == {"params_file": "params/default.yaml"}
    assert lock["params"]["params/default.yaml"] == yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
