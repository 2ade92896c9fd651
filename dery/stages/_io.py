"""Plumbing shared by the stage entry points: logging, JSON/npz I/O, images, model loading.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data as D
from .. import integrity, repro

log = logging.getLogger("dery")
NUM_CLASSES = 10


@contextlib.contextmanager
def logged(path: str | os.PathLike | None, threads: int = 1):
    """Send logging and stderr (progress bars) to the rule's log file; pin torch's threads and check the
    reproducibility mode took effect (``dery.repro``)."""
    if path is None:
        repro.check_job(threads)
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old = sys.stderr
        sys.stderr = fh
        try:
            repro.check_job(threads)
            yield
        except BaseException as exc:
            log.exception("stage failed")  # the full traceback goes to the job's log file
            print(f"dery: {type(exc).__name__}: {exc}", file=old)  # one line on the console
            raise
        finally:
            sys.stderr = old
            root.removeHandler(handler)


def _json(path) -> Any:
    return json.loads(Path(path).read_text())


def _save_npz(path, **arrays) -> None:
    tmp = Path(str(path) + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    integrity.seal(path)


def _images(split: dict, which: str, dataset: D.FashionMNIST | None = None, limit: int | None = None):
    ds = dataset or D.load_fashion_mnist(split["data_dir"])
    if which == "test":
        x, y = ds.test_x, ds.test_y
    else:
        idx = np.asarray(split[which][:limit] if limit else split[which])
        x, y = ds.train_x[idx], ds.train_y[idx]
    return D.to_images(x), torch.as_tensor(y)


def _feats(npz: str) -> list[np.ndarray]:
    integrity.verify(npz)
    with np.load(npz) as z:
        return [z[k] for k in sorted(z.files)]


def _infos(model_ids, ckpt_dir: str, feat_dir: str, with_feats: bool = True) -> dict:
    """Zoo models with their dissection (``stitching.ModelInfo``), keyed by model id."""
    from .. import (
        stitching as ST,  # imports timm: only the stages that build networks pay for it
    )

    return {m: ST.load_model_info(Path(ckpt_dir) / f"{m}.safetensors", Path(feat_dir) / f"{m}.json",
                                  Path(feat_dir) / f"{m}.npz" if with_feats else None) for m in model_ids}


def spec_seed(seed: int, spec_id: str) -> int:
    """A seed of its own for each (seed, candidate id): a hash of the whole id, stable across processes and
    machines (Python's ``hash`` is salted per process), so candidates never share head, adapter and proxy draws."""
    digest = hashlib.sha256(f"{seed}/{spec_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31)
