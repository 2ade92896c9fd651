"""Shared pieces of the benchmarks: interleaved timing, result rows, the zoos the rows run on."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]

# The paper's 24-model zoo (dery-method.md §2 and §9): node counts as the authors' MODEL_BLOCKS list them,
# the timm architecture with the same blocks (for channel widths; timm counts Swin's patch merging inside a
# stage, so its Swin node counts are 12/24 where the authors list 15/27), and params / GMACs at 224 px
# for realistic costs in the reassembly instance.
PAPER_ZOO: list[tuple[str, int, str]] = [
    ("resnet18", 8, "resnet18"), ("resnet50", 16, "resnet50"), ("resnet101", 33, "resnet101"),
    ("resnet50mocov2", 16, "resnet50"), ("resnet50byol", 16, "resnet50"), ("resnet50simclr", 16, "resnet50"),
    ("swsl_resnext50_32x4d", 16, "resnext50_32x4d"), ("mobilenetv3_large_100", 16, "mobilenetv3_large_100"),
    ("vit_tiny", 12, "vit_tiny_patch16_224"), ("vit_small", 12, "vit_small_patch16_224"),
    ("vit_small_mocov3", 12, "vit_small_patch16_224"), ("vit_base", 12, "vit_base_patch16_224"),
    ("vit_base_mae", 12, "vit_base_patch16_224"), ("vit_large", 24, "vit_large_patch16_224"),
    ("swin_tiny", 15, "swin_tiny_patch4_window7_224"), ("swin_small", 27, "swin_small_patch4_window7_224"),
    ("swin_base", 27, "swin_base_patch4_window7_224"), ("swin_large", 27, "swin_large_patch4_window7_224"),
    ("regnet_y_800mf", 14, "regnety_008"), ("regnet_y_1_6gf", 27, "regnety_016"), ("regnet_y_3_2gf", 21, "regnety_032"),
    ("regnet_y_8gf", 17, "regnety_080"), ("regnet_y_16gf", 18, "regnety_160"), ("regnet_y_32gf", 20, "regnety_320"),
]


@dataclass
class Row:
    """One line of the benchmark table."""

    row: str
    what: str
    dery: str
    baseline: str
    ratio: str
    target: str
    met: str


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # Markdown detail sections printed after the table


# CPU seconds of this process: on a machine shared with other work, waiting for a core is not counted, so
# ratios and single-thread costs stay comparable between runs (the rules run with threads: 1, as here).
CLOCK = time.process_time


def median_times(variants: dict[str, Callable[[], Any]], repeats: int, warmup: bool = True,
                 clock: Callable[[], float] = CLOCK) -> dict[str, float]:
    """Median time of each variant, run interleaved (A B C A B C ...) so that load from other work on the
    machine hits every variant alike; one untimed warm-up round first."""
    if warmup:
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            t = clock()
            fn()
            times[k].append(clock() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def timed(fn: Callable[[], Any], clock: Callable[[], float] = CLOCK) -> tuple[Any, float]:
    t = clock()
    out = fn()
    return out, clock() - t


def fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 100:
        return f"{seconds / 60:.1f} min"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def load_params(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load((ROOT / path).read_text() if not Path(path).is_absolute() else Path(path).read_text())


def probe_uint8(n: int, seed: int = 0) -> np.ndarray:
    """n Fashion-MNIST training images (uint8 [n, 28, 28]) when Debian's package is installed, else seeded noise
    of the same shape (timings and memory do not depend on the pixel values)."""
    from dery import data as D

    try:
        x = D.load_fashion_mnist(D.find_fashion_mnist(None)).train_x
        return x[np.random.default_rng(seed).permutation(len(x))[:n]] if n <= len(x) else np.resize(x, (n, 28, 28))
    except Exception:
        return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def zoo_models(params: dict[str, Any], num_classes: int = 5, seed: int = 0) -> dict[str, Any]:
    """The params file's zoo with random weights (timing does not depend on the weights)."""
    import torch

    from dery import zoo as Z

    out = {}
    for i, spec in enumerate(params["zoo"]):
        torch.manual_seed(seed + i)
        out[spec["id"]] = Z.create(spec["arch"], num_classes, spec.get("kwargs")).eval()
    return out


def pooled_width(shape: tuple[int, ...], fmt: str) -> int:
    """Channels of a node's pooled feature: C of NCHW, the last axis of NHWC maps and NLC tokens."""
    return int(shape[0] if fmt == "NCHW" else shape[-1])
