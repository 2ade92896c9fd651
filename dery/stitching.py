"""Turn an assembly spec into a runnable ``nn.Module``: stem -> block -> adapter -> block ... -> head.

Adapters join any two families (CNN maps NCHW, Swin maps NHWC, ViT tokens NLC): the source
is viewed as a map (prefix tokens dropped), resized deterministically to the next block's
native input grid (average pooling down, nearest up: no random strides), mapped by one 1x1
convolution (the paper's "single stitching layer with 1x1 convolution") and put into the
next block's format. Init is least squares on the probe features (as SN-Net's ``ps_inv``)
or PyTorch's default random init (as the paper), a param. Consecutive blocks of the same
model need no adapter (identity).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import features as F
from . import integrity, zoo


@dataclass(frozen=True)
class Port:
    """The tensor layout at a block boundary: format, channels, grid, prefix tokens."""

    fmt: str
    channels: int
    grid: tuple[int, int]
    prefix: int = 0

    @staticmethod
    def of(shape: list[int] | tuple[int, ...], fmt: str, prefix: int = 0) -> Port:
        if fmt == "NLC":
            side = int(math.isqrt(shape[0] - prefix))
            return Port(fmt, shape[1], (side, side), prefix)
        if fmt == "NHWC":
            return Port(fmt, shape[2], (shape[0], shape[1]))
        return Port(fmt, shape[0], (shape[1], shape[2]))


def to_map(x: torch.Tensor, port: Port) -> torch.Tensor:
    if port.fmt == "NCHW":
        return x
    if port.fmt == "NHWC":
        return x.permute(0, 3, 1, 2)
    x = x[:, port.prefix:]
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *port.grid)


def from_map(x: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "NCHW":
        return x.contiguous()
    if fmt == "NHWC":
        return x.permute(0, 2, 3, 1).contiguous()
    return x.flatten(2).transpose(1, 2).contiguous()


def resize(x: torch.Tensor, grid: tuple[int, int], src: tuple[int, int] | None = None) -> torch.Tensor:
    """Average-pool down or nearest-upsample to ``grid``. ``src``: the input grid when known statically.

    An integer ratio uses plain avg_pool2d (the same numbers as adaptive pooling) because ONNX cannot
    export adaptive pooling of a map whose size comes from a reshape (Swin's and ViT's token grids).
    """
    h, w = src if src is not None else x.shape[-2:]
    if (h, w) == tuple(grid):
        return x
    if h >= grid[0] and w >= grid[1]:
        if h % grid[0] == 0 and w % grid[1] == 0:
            k = (h // grid[0], w // grid[1])
            return nn.functional.avg_pool2d(x, k, k)
        return nn.functional.adaptive_avg_pool2d(x, grid)
    return nn.functional.interpolate(x, size=grid, mode="nearest")


class Stitch(nn.Module):
    def __init__(self, src: Port, dst: Port):
        super().__init__()
        self.src, self.dst = src, dst
        self.proj = nn.Conv2d(src.channels, dst.channels, 1)

    def forward(self, x):
        return from_map(self.proj(resize(to_map(x, self.src), self.dst.grid, self.src.grid)), self.dst.fmt)

    @torch.no_grad()
    def init_least_squares(self, x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> float:
        """Fit the 1x1 conv on pooled probe features (pooling commutes with a 1x1 conv); returns R²."""
        x64, y64 = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
        xm, ym = x64.mean(0), y64.mean(0)
        xc, yc = x64 - xm, y64 - ym
        gram = xc.T @ xc
        lam = ridge * gram.trace() / gram.shape[0] + 1e-12
        w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
        b = ym - xm @ w
        self.proj.weight.copy_(w.T.reshape(self.proj.weight.shape).float())
        self.proj.bias.copy_(b.float())
        resid = (yc - xc @ w).square().sum()
        return float(1 - resid / yc.square().sum().clamp_min(1e-12))


class FreshStem(nn.Module):
    """A new, randomly initialised stem: the paper's ``Conv2d(in_chans, C, 7, 2, 3, bias=False) -> BN -> ReLU ->
    MaxPool2d(3, 2, 1)`` (DeRy's ``base``), C = the first block's input channels.

    Our addition: its output (1/4 of the image side) is resized deterministically to the first block's native
    grid and put into that block's format (tokens for a ViT or Swin first block), as an adapter would, because
    our images are small (32 px: the paper's stem gives 8x8 where it gave 56x56 at 224 px) and a block may start
    at any node. ``image_size`` is accepted for the callers' signature; the stem itself is size-agnostic.
    """

    def __init__(self, dst: Port, image_size: int = 32, in_chans: int = 3):
        super().__init__()
        self.dst = dst
        self.body = nn.Sequential(nn.Conv2d(in_chans, dst.channels, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(dst.channels), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, stride=2, padding=1))

    def forward(self, x):
        return from_map(resize(self.body(x), self.dst.grid), self.dst.fmt)


class Head(nn.Module):
    def __init__(self, port: Port, num_classes: int):
        super().__init__()
        self.port = port
        self.fc = nn.Linear(port.channels, num_classes)

    def forward(self, x):
        return self.fc(F.pool(x, self.port.fmt))


class Assembly(nn.Module):
    def __init__(self, stem: nn.Module, blocks: list[nn.Module], adapters: list[nn.Module], head: Head):
        super().__init__()
        self.stem, self.blocks, self.adapters, self.head = stem, nn.ModuleList(blocks), nn.ModuleList(adapters), head

    def forward_features(self, x):
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            if i:
                x = self.adapters[i - 1](x)
            x = block(x)
        return x

    def forward(self, x):
        return self.head(self.forward_features(x))

    def pretrained_modules(self) -> list[nn.Module]:
        """What FZ freezes: the pretrained blocks and, with ``stem: own``, the pretrained stem they came with.

        A ``FreshStem`` is new and random, so it trains (with adapters and head), as the paper's FZ."""
        return ([self.stem] if isinstance(self.stem, F.OwnStem) else []) + list(self.blocks)


# ---------------------------------------------------------------- building from results/ files

@dataclass
class ModelInfo:
    """One zoo model with its dissection, as written by the features stage."""

    model: nn.Module
    meta: dict[str, Any]
    trace: F.Trace
    feats: dict[int, np.ndarray] | None = None

    def port_in(self, node: int, prefix: int | None = None) -> Port:
        """Input layout of a block starting at 1-based node ``node``: the output of node - 1 (0 = stem)."""
        p = self.meta["num_prefix_tokens"] if prefix is None else prefix
        return Port.of(self.meta["out_shapes"][node - 1], self.meta["fmt"][node - 1], p)

    def port_out(self, node: int, prefix: int | None = None) -> Port:
        p = self.meta["num_prefix_tokens"] if prefix is None else prefix
        return Port.of(self.meta["out_shapes"][node], self.meta["fmt"][node], p)


def model_info(model: nn.Module, meta: dict[str, Any], feats: dict[int, np.ndarray] | None = None) -> ModelInfo:
    """A ModelInfo from an in-memory model and its dissection (the features stage's JSON, or an artifact spec's
    copy)."""
    tr = F.Trace(meta["names"][1:], meta["glue"], [tuple(s) for s in meta["in_shapes"][1:]],
                 [tuple(s) for s in meta["out_shapes"][1:]], meta["stem_modules"])
    return ModelInfo(model, meta, tr, feats)


def dissect(model: nn.Module, probe: torch.Tensor) -> ModelInfo:
    """Dissect an in-memory model on probe images (what the features stage writes, without files)."""
    nf = F.extract(model, probe, batch_size=len(probe))
    tr = F.trace(model, probe[:2])
    return ModelInfo(model, F.describe(model, nf, tr), tr, dict(enumerate(nf.feats)))


def load_model_info(zoo_ckpt: str | Path, features_json: str | Path,
                    features_npz: str | Path | None = None) -> ModelInfo:
    model, _ = zoo.load(zoo_ckpt)
    meta = json.loads(Path(features_json).read_text())
    feats = None
    if features_npz is not None:
        integrity.verify(features_npz)
        with np.load(features_npz) as z:
            feats = {int(k[1:]): z[k] for k in z.files}
    return model_info(model, meta, feats)


def build(spec: dict[str, Any], infos: dict[str, ModelInfo], num_classes: int, stem: str = "own",
          adapter_init: str = "lstsq", seed: int = 0, image_size: int = 32) -> tuple[Assembly, dict[str, Any]]:
    """Build the assembly of ``spec["blocks"]`` (ordered by position); returns it and build notes (R² per adapter)."""
    torch.manual_seed(seed)
    blocks = spec["blocks"]
    first = infos[blocks[0]["model"]]
    if stem == "own":
        stem_mod: nn.Module = F.OwnStem(first.model, first.trace)
        prefix = first.meta["num_prefix_tokens"]
    else:
        stem_mod = FreshStem(first.port_in(1, prefix=0), image_size)
        prefix = 0
    segments, adapters, notes = [], [], {"adapter_r2": []}
    prev = None
    for i, b in enumerate(blocks):
        info = infos[b["model"]]
        if i:
            src = infos[prev["model"]].port_out(prev["end"], prefix)
            if prev["model"] == b["model"] and prev["end"] + 1 == b["start"]:
                adapters.append(nn.Identity())  # the model's own consecutive blocks: nothing to stitch
            else:
                dst = info.port_in(b["start"], prefix=0)
                st = Stitch(src, dst)
                if adapter_init == "lstsq":
                    src_feats = infos[prev["model"]].feats
                    dst_feats = info.feats
                    if src_feats is None or dst_feats is None:
                        raise ValueError("least-squares adapter init needs the probe features of both models")
                    notes["adapter_r2"].append(st.init_least_squares(src_feats[prev["end"]], dst_feats[b["start"] - 1]))
                adapters.append(st)
                prefix = 0
        segments.append(F.Segment(info.model, info.trace, b["start"] - 1, b["end"] - 1))
        prev = b
    last = infos[prev["model"]].port_out(prev["end"], prefix)
    asm = Assembly(stem_mod, segments, adapters, Head(last, num_classes))
    return asm.eval(), notes


def block_ports(info: ModelInfo, start: int, end: int) -> tuple[Port, Port]:
    return info.port_in(start, 0), info.port_out(end, 0)
