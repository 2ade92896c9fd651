"""One list of dependencies, and a per-rule conda environment that works wherever Snakemake puts it.

pyproject.toml is the source of truth; scripts/sync_envs.py writes environment.yml (conda users' project
environment) and workflow/envs/dery.yaml (the per-rule environment of `--software-deployment-method conda`).
No conda channel is reachable here, so nothing below builds a conda environment: the tests check the files
and the mechanism by which a conda job imports dery (Snakemake's script preamble), with a plain interpreter
that has no dery installed standing in for the environment's python.
"""
import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SYNC = ROOT / "scripts" / "sync_envs.py"
GENERATED = "generated from pyproject.toml by scripts/sync_envs.py; edit pyproject.toml"


def sync(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SYNC), *args], capture_output=True, text=True)


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pip_list(env_file: Path) -> list[str]:
    deps = yaml.safe_load(env_file.read_text())["dependencies"]
    return next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)


def canonical(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------ one source of truth

def test_the_conda_files_are_current_with_pyproject():
    proc = sync("--check")
    assert proc.returncode == 0, proc.stderr


def test_environment_yml_is_pyprojects_dependencies_and_test_extra_and_dery_itself():
    deps = project()["dependencies"] + project()["optional-dependencies"]["test"]
    text = (ROOT / "environment.yml").read_text()
    assert GENERATED in text
    assert pip_list(ROOT / "environment.yml") == deps + ["-e ."]
    assert "python=3.11" in yaml.safe_load(text)["dependencies"]


def test_the_per_rule_env_is_pyprojects_runtime_dependencies():
    text = (ROOT / "workflow" / "envs" / "dery.yaml").read_text()
    assert GENERATED in text
    assert pip_list(ROOT / "workflow" / "envs" / "dery.yaml") == project()["dependencies"]


def test_the_per_rule_env_installs_no_path_and_no_dery():
    """Snakemake copies the file under .snakemake/conda (or --conda-prefix): a relative path would point nowhere."""
    for line in pip_list(ROOT / "workflow" / "envs" / "dery.yaml"):
        assert not line.startswith(("-e", "--editable", "-r", "-c", ".", "/", "~", "file:")), line
        assert "/" not in line and "\\" not in line, line
        assert canonical(line) != "dery", line


def test_check_names_a_stale_file_and_its_differing_lines(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "workflow" / "envs").mkdir(parents=True)
    assert sync("--root", str(tmp_path)).returncode == 0
    assert sync("--root", str(tmp_path), "--check").returncode == 0

    toml = tmp_path / "pyproject.toml"
    toml.write_text(toml.read_text().replace('dependencies = [\n', 'dependencies = [\n    "einops>=0.8",\n', 1))
    proc = sync("--root", str(tmp_path), "--check")
    assert proc.returncode != 0
    assert "environment.yml is stale" in proc.stderr and "workflow/envs/dery.yaml is stale" in proc.stderr
    assert '+      - "einops>=0.8"' in proc.stderr
    assert "einops" not in (tmp_path / "environment.yml").read_text(), "--check must not write"

    assert sync("--root", str(tmp_path)).returncode == 0
    env = tmp_path / "workflow" / "envs" / "dery.yaml"
    env.write_text(env.read_text() + '      - "-e ../.."\n')  # a hand edit
    proc = sync("--root", str(tmp_path), "--check")
    assert proc.returncode != 0
    assert "workflow/envs/dery.yaml is stale" in proc.stderr and "environment.yml" not in proc.stderr
    assert '-      - "-e ../.."' in proc.stderr


def test_every_package_dery_imports_is_declared_in_pyproject():
    declared = {canonical(r) for r in project()["dependencies"]}
    owners = importlib.metadata.packages_distributions()
    missing = {}
    for path in sorted((ROOT / "dery").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "dery":
                    continue
                dists = {canonical(d) for d in owners.get(top, [])}
                if not dists & declared:
                    missing.setdefault(f"{top} ({', '.join(sorted(dists)) or 'not installed'})", []).append(
                        str(path.relative_to(ROOT)))
    assert not missing, f"imported by dery/ but not in [project].dependencies: {missing}"


# ------------------------------------------------------------------------------ how conda jobs import dery

def test_every_rule_with_a_conda_env_runs_a_python_script():
    """Only `script:` jobs get the preamble below; a `shell:` or `run:` job in the env could not import dery."""
    assert (ROOT / "Snakefile").exists() and (ROOT / "dery" / "__init__.py").exists()
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule |checkpoint )", smk.read_text(), flags=re.M)[1:]:
            if re.search(r"^\s+conda:", block, re.M):
                assert re.search(r'^\s+script:\s*\n?\s*"[^"]+\.py"', block, re.M), f"{smk.name}: {block[:60]}"
                assert not re.search(r"^\s+(shell|run):", block, re.M), f"{smk.name}: {block[:60]}"


def test_a_script_job_imports_the_package_beside_the_snakefile_without_installing_it(tmp_path):
    """The mechanism the per-rule env relies on, run by Snakemake itself (without conda).

    Snakemake inserts the Snakefile's directory into its sys.path when it parses the workflow, and the
    preamble it writes into every `script:` job appends that sys.path (snakemake/script/__init__.py), with
    absolute paths that do not depend on where the env file or the env lives. Re-running the job's script
    with a bare interpreter (no site-packages, no PYTHONPATH, no dery) stands in for the conda env's python.
    """
    wf, work = tmp_path / "wf", tmp_path / "work"
    (wf / "probe_pkg").mkdir(parents=True)
    (wf / "workflow" / "scripts").mkdir(parents=True)
    work.mkdir()
    (wf / "probe_pkg" / "__init__.py").write_text("WHERE = __file__\n")
    (wf / "Snakefile").write_text('rule probe:\n    output: "where.txt"\n    script: "workflow/scripts/probe.py"\n')
    (wf / "workflow" / "scripts" / "probe.py").write_text(
        "import probe_pkg\nopen(snakemake.output[0], 'w').write(probe_pkg.WHERE)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(wf / "Snakefile"), "-d", str(work),
                           "--cores", "1", "--skip-script-cleanup"], cwd=work, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "where.txt").read_text() == str(wf / "probe_pkg" / "__init__.py")

    bare = [getattr(sys, "_base_executable", sys.executable), "-I", "-S"]
    assert subprocess.run([*bare, "-c", "import probe_pkg"], cwd=work, capture_output=True).returncode != 0
    (job,) = (work / ".snakemake" / "scripts").glob("*.probe.py")
    (work / "where.txt").unlink()
    proc = subprocess.run([*bare, str(job)], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "where.txt").read_text() == str(wf / "probe_pkg" / "__init__.py")
