"""Checksums for the binary files stages hand to each other (checkpoints, features, CKA).

Snakemake re-runs on changed inputs but never checks that a finished output still holds what
its job wrote: a truncated copy, a flipped byte or a file from another run would be used
silently. Every writer seals its file with a ``.sha256`` sidecar; every reader verifies it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


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


def verify(path: str | os.PathLike) -> None:
    path = Path(path)
    fix = "Delete it (and its .sha256) and re-run snakemake to rebuild it."
    if not path.is_file():
        raise IntegrityError(f"{path} is missing. Re-run snakemake to rebuild it.")
    if not sidecar(path).is_file():
        raise IntegrityError(f"{path} has no checksum file {sidecar(path).name}, so its content cannot be trusted. {fix}")
    if sha256(path) != sidecar(path).read_text().strip():
        raise IntegrityError(f"{path} does not match the checksum written with it: it was changed or corrupted "
                             f"after its job finished. {fix}")
