"""Adapter training before fine-tuning (``stitching.train_steps``): every stitching layer, and nothing else, learns
to hand the block it feeds what that block's own model would have handed it.

Why: the model-stitching literature (Bansal et al. 2021, "Revisiting model stitching"; SN-Net, Pan et al. 2023)
finds that how the stitch layer is fitted decides whether a stitched network keeps, or beats, its sources'
accuracy. Our least-squares init matches only the channel means of the probe features (pooling commutes with a
1x1 conv) and the paper's random init matches nothing; fine-tuning then has to repair the joins through the label
loss alone. This phase fits each adapter, for a fixed small budget, to the *native input* of the block b it feeds
(a slice of model M'): what M' itself computes at b's input on the same images, on the full map (every position,
not channel means). Everything else is frozen (no gradient, eval mode: BatchNorm statistics do not move), so only
the joins change. ``train_steps: 0`` (the default) skips the phase and the results are those of before it existed.

Adapters are trained one after another, in network order, each on the input the assembly gives it with the
adapters before it already trained: that input is what it will see when fine-tuning starts.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from . import stitching as ST
from .features import DissectionError


class _Reached(Exception):
    """Stops a zoo model's forward once the wanted native feature is captured: later nodes would be wasted work."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


def stitched_adapters(asm: ST.Assembly, spec: dict[str, Any]) -> list[tuple[int, ST.Stitch, dict[str, Any]]]:
    """(index in ``asm.adapters``, adapter, the spec block it feeds) for every real adapter. Adapter i joins
    blocks i and i + 1; the identity between a model's own consecutive blocks has nothing to learn."""
    blocks = spec["blocks"]
    if len(asm.adapters) != len(blocks) - 1:
        raise ValueError(f"the assembly has {len(asm.adapters)} joins but the spec lists {len(blocks)} blocks")
    return [(i, a, blocks[i + 1]) for i, a in enumerate(asm.adapters) if isinstance(a, ST.Stitch)]


@torch.no_grad()
def native_input(info: ST.ModelInfo, start: int, x: torch.Tensor) -> torch.Tensor:
    """What model ``info`` itself feeds its block starting at 1-based node ``start``: the output of node
    ``start - 1`` (the stem's output when ``start`` is 1), taken with the hooks the features stage uses, in the
    model's own forward, in eval mode. Prefix tokens (CLS) are dropped: an adapter outputs none."""
    model, nodes = info.model, info.trace.nodes

    def reached(value: Any) -> None:
        raise _Reached(value[0] if isinstance(value, (tuple, list)) else value)

    if start == 1:
        handle = model.get_submodule(nodes[0]).register_forward_pre_hook(lambda m, inp: reached(inp[0]))
    else:
        handle = model.get_submodule(nodes[start - 2]).register_forward_hook(lambda m, inp, out: reached(out))
    try:
        with _eval_mode(model):
            model(x)
    except _Reached as got:
        out = got.value
    else:
        raise DissectionError(f"the forward pass never reached node {start - 1} of the model")
    finally:
        handle.remove()
    prefix = info.meta["num_prefix_tokens"]
    return out[:, prefix:] if info.meta["fmt"][start - 1] == "NLC" else out


def adapter_errors(asm: ST.Assembly, spec: dict[str, Any], infos: dict[str, ST.ModelInfo], images: torch.Tensor,
                   batch_size: int = 256) -> list[dict[str, Any]]:
    """Per adapter: MSE between its output and its block's native input on ``images``, and R² (1 - SSE over the
    target's variance around its per-channel mean: 0 = no better than a constant map, 1 = exact)."""
    device = _device(asm)
    out = []
    with _eval_mode(asm), torch.no_grad():
        for k, stitch, block in stitched_adapters(asm, spec):
            sse, total, total_sq, count = 0.0, None, None, 0
            for s in range(0, len(images), batch_size):
                x = images[s: s + batch_size].to(device)
                pred = ST.to_map(stitch(_adapter_input(asm, k, x)), stitch.dst).double()
                tgt = ST.to_map(native_input(infos[block["model"]], block["start"], x), stitch.dst).double()
                sse += float((pred - tgt).square().sum())
                part, part_sq = tgt.sum((0, 2, 3)), tgt.square().sum((0, 2, 3))
                total = part if total is None else total + part
                total_sq = part_sq if total_sq is None else total_sq + part_sq
                count += tgt.shape[0] * tgt.shape[2] * tgt.shape[3]
            sst = float((total_sq - total.square() / count).sum())
            out.append({"adapter": k, "feeds": _block_text(block), "mse": sse / (count * stitch.dst.channels),
                        "r2": 1.0 - sse / max(sst, 1e-12)})
    return out


def train_adapters(asm: ST.Assembly, spec: dict[str, Any], infos: dict[str, ST.ModelInfo], images: torch.Tensor,
                   steps: int, lr: float, batch_size: int, seed: int, eval_images: torch.Tensor | None = None,
                   device: torch.device | str | None = None) -> list[dict[str, Any]]:
    """Train each adapter of ``asm`` (built from ``spec`` with ``infos``) for ``steps`` AdamW steps at ``lr`` on
    batches of ``batch_size`` of ``images`` (target-train images), minimising the MSE to its block's native input;
    in place, deterministic under ``seed``. Nothing but adapter weights changes: every other parameter and buffer
    is bit-identical afterwards and every module keeps its train/eval mode.

    Returns one dict per adapter: its index, the block it feeds, MSE and R² before and after training on
    ``eval_images`` (default: the first 256 of ``images``, i.e. training-set errors), and the seconds it took.
    ``steps`` 0 does nothing and returns ``[]``. ``device``: where to train (default: where ``asm`` is); the
    assembly and the zoo models are returned to their devices.
    """
    if steps < 0 or batch_size < 1 or not 0 < lr:
        raise ValueError(f"need steps >= 0, batch_size >= 1 and lr > 0; got {steps}, {batch_size}, {lr}")
    joins = stitched_adapters(asm, spec)
    if steps == 0 or not joins:
        return []
    if len(images) == 0:
        raise ValueError("adapter training needs at least one image")
    check = images[:256] if eval_images is None else eval_images
    homes = [(m, _device(m)) for m in [asm] + [infos[b["model"]].model for _, _, b in joins]]
    target = torch.device(device) if device is not None else _device(asm)
    try:
        for m, _ in homes:
            m.to(target)
        before = adapter_errors(asm, spec, infos, check)
        g = torch.Generator().manual_seed(seed)
        batches = _batches(len(images), batch_size, g)
        seconds = []
        with _eval_mode(asm):  # frozen parts run in eval mode; a Stitch is one conv, the same in either mode
            for k, stitch, block in joins:
                info, t0 = infos[block["model"]], time.perf_counter()
                # no weight decay: the target is a regression onto real features, decay would bias it towards 0
                opt = torch.optim.AdamW(stitch.parameters(), lr=lr, weight_decay=0.0)
                for step in range(steps):
                    x = images[next(batches)].to(target)
                    with torch.no_grad():  # the frozen parts get no gradient, so their weights cannot move
                        src = _adapter_input(asm, k, x)
                        tgt = native_input(info, block["start"], x)
                    loss = nn.functional.mse_loss(stitch(src), tgt)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"adapter {k} ({_block_text(block)}): loss is {loss.item()} at "
                                                 f"step {step + 1}; lower stitching.train_lr in your params file.")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                opt.zero_grad(set_to_none=True)  # fine-tuning starts with no stale gradient on the adapter
                seconds.append(time.perf_counter() - t0)
        after = adapter_errors(asm, spec, infos, check)
    finally:
        for m, home in homes:
            m.to(home)
    return [{"adapter": b["adapter"], "feeds": b["feeds"], "mse_before": b["mse"], "mse_after": a["mse"],
             "r2_before": b["r2"], "r2_after": a["r2"], "steps": steps, "seconds": s}
            for b, a, s in zip(before, after, seconds, strict=True)]


def _adapter_input(asm: ST.Assembly, k: int, x: torch.Tensor) -> torch.Tensor:
    """The assembly's activation entering adapter ``k``: stem, then blocks 0..k with the adapters between them."""
    h = asm.stem(x)
    for i in range(k + 1):
        if i:
            h = asm.adapters[i - 1](h)
        h = asm.blocks[i](h)
    return h


def _batches(n: int, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of indices: passes over a fresh permutation each, so every image is seen once per pass."""
    while True:
        order = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            yield order[s: s + batch_size]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (BatchNorm uses, and does not update, its statistics), then every module's own
    mode back: the caller's train/eval state is not ours to change."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def _block_text(block: dict[str, Any]) -> str:
    return f"{block['model']}[{block['start']}-{block['end']}]"
