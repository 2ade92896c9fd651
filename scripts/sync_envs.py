#!/usr/bin/env python3
"""Write the conda environment files from pyproject.toml, the one list of dery's dependencies.

    python scripts/sync_envs.py            # rewrite environment.yml and workflow/envs/dery.yaml
    python scripts/sync_envs.py --check    # exit 1, naming each stale file and its differing lines

environment.yml          the project environment for conda users: [project].dependencies, the `test` extra,
                         and dery itself installed editable from the checkout (`-e .`, which conda's pip resolves
                         against the directory environment.yml lies in).
workflow/envs/dery.yaml  the per-rule environment of `snakemake --software-deployment-method conda`:
                         [project].dependencies only. It installs no dery: Snakemake copies this file under
                         .snakemake/conda/ (or --conda-prefix), so a relative path in it would point nowhere.
                         Jobs import dery from the checkout instead: Snakemake puts the Snakefile's directory
                         on sys.path when it parses the workflow and hands its sys.path to every `script:`
                         job through the script preamble (snakemake/script/__init__.py).
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "3.11"
CHANNELS = "[conda-forge]"
GENERATED = "generated from pyproject.toml by scripts/sync_envs.py; edit pyproject.toml, then run it"


@dataclass(frozen=True)
class EnvFile:
    path: str  # relative to the project root
    header: tuple[str, ...]  # comment lines, without '# '
    name: str | None
    extras: tuple[str, ...]  # optional-dependency groups to add
    self_install: str | None  # pip line installing dery itself, or None


ENV_FILES = (
    EnvFile(
        path="environment.yml",
        header=(
            "Conda users' project environment: `conda env create -f environment.yml && conda activate dery`.",
            "dery's dependencies and test tools from PyPI, and dery itself editable from this checkout (`-e .`).",
            GENERATED + ".",
        ),
        name="dery",
        extras=("test",),
        self_install="-e .",
    ),
    EnvFile(
        path="workflow/envs/dery.yaml",
        header=(
            "Per-rule environment of `snakemake --software-deployment-method conda` (every rule's `conda:`).",
            "dery's runtime dependencies only, no dery: Snakemake copies this file (under .snakemake/conda or",
            "--conda-prefix), so it must not name paths; jobs import dery from the checkout, whose directory",
            "(the Snakefile's) Snakemake appends to each `script:` job's sys.path.",
            GENERATED + ".",
        ),
        name=None,
        extras=(),
        self_install=None,
    ),
)


def requirements(root: Path, extras: tuple[str, ...]) -> list[str]:
    """[project].dependencies, then each named optional-dependency group, in pyproject's order."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += project.get("optional-dependencies", {})[extra]
    return reqs


def render(env: EnvFile, root: Path) -> str:
    pip = requirements(root, env.extras) + ([env.self_install] if env.self_install else [])
    lines = [f"# {line}" for line in env.header]
    if env.name:
        lines.append(f"name: {env.name}")
    lines += [f"channels: {CHANNELS}", "dependencies:", f"  - python={PYTHON}", "  - pip", "  - pip:"]
    # JSON strings are YAML double-quoted scalars: safe for '<', ',', '#' and a leading '-'.
    lines += [f"      - {json.dumps(req)}" for req in pip]
    return "\n".join(lines) + "\n"


def stale(env: EnvFile, root: Path) -> list[str]:
    """The differing lines (unified diff, file -> generated) of a stale file; empty when it is current."""
    path = root / env.path
    want = render(env, root)
    have = path.read_text(encoding="utf-8") if path.exists() else ""
    if have == want:
        return []
    return list(difflib.unified_diff(have.splitlines(), want.splitlines(), f"{env.path} (on disk)",
                                     f"{env.path} (from pyproject.toml)", lineterm=""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file is stale")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="project root holding pyproject.toml (default: %(default)s)")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    failed = False
    for env in ENV_FILES:
        diff = stale(env, root)
        if not diff:
            continue
        if args.check:
            failed = True
            print(f"sync_envs: {env.path} is stale (differs from pyproject.toml); "
                  f"run `python scripts/sync_envs.py`:", file=sys.stderr)
            print("\n".join(diff), file=sys.stderr)
        else:
            (root / env.path).write_text(render(env, root), encoding="utf-8")
            print(f"sync_envs: wrote {env.path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
