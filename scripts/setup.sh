#!/usr/bin/env bash
# Set up dery on a fresh Debian/Ubuntu machine: Fashion-MNIST from Debian when it can be
# installed, a virtual environment in .venv with dery and its pinned dependencies.
# Idempotent: a second call only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "setup: installing Debian's dataset-fashion-mnist (else the workflow downloads it with torchvision)"
  (as_root apt-get update -q && as_root apt-get install -y -q dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "setup: could not install dataset-fashion-mnist; the first run will try torchvision's download"
fi

# --- test-only: Debian's chromium, the headless browser tests/test_report.py opens the Snakemake report in.
# Best effort, like the dataset above (needs root or sudo); without it that one check is skipped.
if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium (headless browser for the report test)"
  (as_root apt-get update -q && as_root apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core) \
    >/dev/null 2>&1 || echo "setup: could not install chromium; tests/test_report.py will skip its browser check"
fi
# --- end of test-only block

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    echo "setup: python venv module missing; installing python3-venv"
    as_root apt-get install -y -q python3-venv >/dev/null
    rm -rf .venv && "$PY" -m venv .venv
  fi
fi
if ! .venv/bin/python -c "import dery, snakemake, pyscipopt, mlflow, timm, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.dery-installed ] || [ requirements.lock -nt .venv/.dery-installed ]; then
  echo "setup: installing dery and its dependencies into .venv (first time: several minutes, torch is large)"
  # requirements.lock pins every package to the version the README's numbers came from
  .venv/bin/python -m pip install -q -c requirements.lock -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import dery, snakemake, pyscipopt, mlflow, timm, pytest"
  touch .venv/.dery-installed
fi
echo "setup: ready (.venv/bin/snakemake, .venv/bin/python)"
