"""Checksums for the binary files stages hand to each other (checkpoints, features, CKA).

Snakemake re-runs on changed inputs but never checks that a finished output still holds what
its job wrote: a truncated copy, a flipped byte or a file from another run would be used
silently. Every writer seals its file with a ``.sha256`` sidecar; every reader verifies it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

# The params file of the running workflow (set by workflow/rules/common.smk, inherited by its jobs), so that the
# advised command rebuilds with the same params.
PARAMS_FILE_ENV = "DERY_PARAMS_FILE"


class IntegrityError(RuntimeError):
    pass


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".sha256")


def seal(path: str | os.PathLike) -> str:
    digest = sha256(path)
    tmp = Path(str(sidecar(path)) + ".tmp")
    tmp.write_text(digest + "\n")
    os.replace(tmp, sidecar(path))
    return digest


def remember_params_file(paths: list[str]) -> None:
    """Called by the workflow at start-up: its jobs inherit the environment, so their errors can advise a command
    with the run's own params file."""
    if paths:
        os.environ[PARAMS_FILE_ENV] = " --configfile ".join(paths)


def rebuild_command(*targets: str | os.PathLike) -> str:
    """The command that rebuilds ``targets`` (files or rule names) and everything made from them. Deleting a file and
    re-running is not enough: Snakemake does not remake an intermediate file whose products are all present
    ("Nothing to be done")."""
    params = os.environ.get(PARAMS_FILE_ENV)
    return (f"snakemake --cores all --forcerun {' '.join(str(t) for t in targets)}"
            + (f" --configfile {params}" if params else ""))


def verify(path: str | os.PathLike) -> None:
    path = Path(path)
    fix = (f"Rebuild it, and every result made from it, with `{rebuild_command(path)}` (it overwrites the file "
           "and its .sha256; nothing needs deleting).")
    if not path.is_file():
        raise IntegrityError(f"{path} is missing. {fix}")
    if not sidecar(path).is_file():
        raise IntegrityError(f"{path} has no checksum file {sidecar(path).name}, so its content cannot be trusted. "
                             f"{fix}")
    if sha256(path) != sidecar(path).read_text().strip():
        raise IntegrityError(f"{path} does not match the checksum written with it: it was changed or corrupted "
                             f"after its job finished. {fix}")
