"""Fashion-MNIST for the embedded default, and the index splits all stages share.

Images are padded from 28x28 to 32x32 (zero border, no interpolation) and repeated to
3 channels so that every timm architecture takes them unchanged.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST train-set pixel statistics
IMAGE_SIZE = 32
TARGET_POOL = 20_000  # the first 20k of the seeded permutation hold the target splits; sources draw from the rest


class DataError(RuntimeError):
    """Missing or malformed data; the message says where dery looked and what to do."""


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path} is not an idx file of unsigned bytes (magic {magic:#x}).")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {data.size} bytes.")
    return data.reshape(dims)


def _locate(root: Path, stem: str) -> Path | None:
    for cand in (root / f"{stem}.gz", root / stem, root / "FashionMNIST" / "raw" / stem):
        if cand.exists():
            return cand
    return None


def find_fashion_mnist(root: str | os.PathLike | None, download_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder holding the four idx files.

    Looks in ``root`` (when given), then Debian's ``dataset-fashion-mnist`` folder, then
    ``download_dir`` where torchvision's downloader is tried as a last resort.
    """
    tried = []
    for cand in [Path(root)] if root else [DEBIAN_DIR] + ([Path(download_dir)] if download_dir else []):
        tried.append(str(cand))
        if all(_locate(cand, s) for s in FILES.values()):
            return cand
    if root is None and download_dir is not None:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(download_dir), train=True, download=True)
            FashionMNIST(str(download_dir), train=False, download=True)
            return Path(download_dir)
        except Exception as exc:  # network errors, missing torchvision: reported below
            tried.append(f"torchvision download into {download_dir} ({type(exc).__name__}: {exc})")
    raise DataError(
        "Fashion-MNIST not found; looked in: " + "; ".join(tried) + ". Fix: install Debian's package "
        "(`apt-get install dataset-fashion-mnist`), or set `data.root` in your params file to a folder "
        "holding train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) "
        "and t10k-labels-idx1-ubyte(.gz)."
    )


@dataclass(frozen=True)
class FashionMNIST:
    train_x: np.ndarray  # uint8 [60000, 28, 28]
    train_y: np.ndarray  # int64 [60000]
    test_x: np.ndarray
    test_y: np.ndarray


def load_fashion_mnist(folder: str | os.PathLike) -> FashionMNIST:
    folder = Path(folder)
    arrays = {k: _read_idx(_locate(folder, s) or folder / s) for k, s in FILES.items()}
    return FashionMNIST(arrays["train_x"], arrays["train_y"].astype(np.int64),
                        arrays["test_x"], arrays["test_y"].astype(np.int64))


def load_labels(folder: str | os.PathLike) -> np.ndarray:
    """The 60k training labels alone (60 kB): enough for pre-flight checks of the splits."""
    folder = Path(folder)
    return _read_idx(_locate(folder, FILES["train_y"]) or folder / FILES["train_y"]).astype(np.int64)


def to_images(x: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalised float32 [N, 3, 32, 32]."""
    t = torch.from_numpy(np.array(x, copy=True)).float().div_(255.0)
    pad = (IMAGE_SIZE - t.shape[-1]) // 2
    t = torch.nn.functional.pad(t, (pad, pad, pad, pad))
    t = (t - MEAN) / STD
    return t.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 4-px-padded crop and horizontal flip, per image, from a seeded generator."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), value=float(-MEAN / STD))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, :, None]  # [n, h, 1]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, :]  # [n, 1, w]
    out = padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out
