"""Dissect a timm model into block-level nodes and extract their pooled features.

Node discovery is generic over timm families (no per-model tables): timm's ``feature_info``
names the stage modules; a stage is expanded into its repeated units (the residual /
transformer / inverted-residual blocks), and siblings of listed stages inside the same
``nn.Sequential`` are taken too (MobileNet/EfficientNet list only stride changes).
Modules that run between two nodes (ConvNeXt/Swin downsampling) are "glue" and belong to
the block that follows them. ``verify_chain`` checks on real data that glue + nodes
reproduce the model's own intermediate outputs, so an unsupported family fails loudly.
"""
from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

_CONTAINERS = (nn.Sequential, nn.ModuleList)


class DissectionError(RuntimeError):
    pass


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _is_stage(m: nn.Module) -> bool:
    if isinstance(m, _CONTAINERS):
        return True
    if isinstance(getattr(m, "blocks", None), _CONTAINERS):
        return True
    # a stage without a container (timm RegStage): every parameterised child is a composite
    # module of one class (b1, b2, ...); a block instead mixes leaf layers and sub-modules
    units = [c for c in m.children() if _has_params(c)]
    return bool(units) and len({type(c) for c in units}) == 1 and all(any(True for _ in c.children()) for c in units)


def _expand(name: str, m: nn.Module) -> list[str]:
    if isinstance(m, _CONTAINERS):
        return [f"{name}.{c}" for c, _ in m.named_children()]
    if isinstance(getattr(m, "blocks", None), _CONTAINERS):
        return [f"{name}.blocks.{c}" for c, _ in m.blocks.named_children()]
    kinds = Counter(type(c) for c in m.children() if _has_params(c))
    unit = kinds.most_common(1)[0][0]
    return [f"{name}.{c}" for c, child in m.named_children() if type(child) is unit]


def node_names(model: nn.Module) -> list[str]:
    """Ordered block-level node names of a timm model."""
    mods = dict(model.named_modules())
    info = getattr(model, "feature_info", None)
    if not info:
        raise DissectionError(f"{type(model).__name__} has no timm `feature_info`; dery cannot find its stages.")
    stages: list[tuple[str, bool]] = []  # (name, inside a sequential container)
    for entry in info:
        name = entry["module"]
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if parent and isinstance(mods.get(parent), _CONTAINERS):
            for child, _ in mods[parent].named_children():
                stages.append((f"{parent}.{child}", True))
        else:
            stages.append((name, False))
    nodes: list[str] = []
    for name, in_seq in dict.fromkeys(stages):
        m = mods[name]
        if _is_stage(m):
            nodes += _expand(name, m)
        elif in_seq and _has_params(m):
            nodes.append(name)
    nodes = list(dict.fromkeys(nodes))
    if not nodes:
        raise DissectionError(f"no block-level nodes found in {type(model).__name__}.")
    return nodes


@dataclass
class Trace:
    """What one forward pass told us about a model's nodes."""

    nodes: list[str]
    glue: list[list[str]]          # modules run before node i and after node i-1 (top-most only)
    in_shapes: list[tuple[int, ...]]
    out_shapes: list[tuple[int, ...]]
    stem_modules: list[str] = field(default_factory=list)


def trace(model: nn.Module, x: torch.Tensor, nodes: list[str] | None = None) -> Trace:
    nodes = nodes or node_names(model)
    node_set = set(nodes)
    events: list[tuple[str, str]] = []
    shapes: dict[str, tuple] = {}
    handles = []
    for name, m in model.named_modules():
        if not name:
            continue

        def pre(mod, inp, name=name):
            events.append(("start", name))
            if name in node_set:
                shapes[name + ":in"] = tuple(inp[0].shape[1:])

        def post(mod, inp, out, name=name):
            events.append(("end", name))
            if name in node_set:
                o = out[0] if isinstance(out, (tuple, list)) else out
                shapes[name + ":out"] = tuple(o.shape[1:])

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in nodes if n + ":out" not in shapes]
    if missing:
        raise DissectionError(f"nodes {missing[:3]} never ran in a forward pass.")

    def ancestors(n: str) -> set[str]:
        parts = n.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    starts = {n: i for i, (k, n) in enumerate(events) if k == "start" and n in node_set}
    ends = {n: i for i, (k, n) in enumerate(events) if k == "end" and n in node_set}
    first = starts[nodes[0]]
    stem = [n for k, n in events[:first] if k == "start" and n not in ancestors(nodes[0])]
    glue: list[list[str]] = [[]]
    for prev, node in zip(nodes, nodes[1:], strict=False):
        window = events[ends[prev] + 1: starts[node]]
        finished = {n for k, n in window if k == "end"}
        ran = [n for k, n in window if k == "start" and n in finished and n not in ancestors(node)]
        glue.append([n for n in ran if not (ancestors(n) & set(ran))])
    return Trace(nodes, glue, [shapes[n + ":in"] for n in nodes], [shapes[n + ":out"] for n in nodes], stem)


def token_format(model: nn.Module, shape: tuple[int, ...]) -> str:
    """'NCHW' for maps, 'NHWC' for Swin-style maps, 'NLC' for token sequences."""
    if len(shape) == 2:
        return "NLC"
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        return "NHWC"
    return "NCHW"


def pool(t: torch.Tensor, fmt: str) -> torch.Tensor:
    """Global average pool: over space for maps, over tokens (prefix tokens included) for NLC."""
    if fmt == "NCHW":
        return t.mean((2, 3))
    if fmt == "NHWC":
        return t.mean((1, 2))
    return t.mean(1)


class Segment(nn.Module):
    """Nodes [start..end] (0-based) of a model with their glue, as one runnable module.

    The glue that runs before node ``start`` (e.g. a ConvNeXt/Swin downsampling layer) is part
    of the segment, so its input is the output of node ``start - 1`` (or of the stem), the
    block input the paper's similarity S(B, B') is measured on.
    """

    def __init__(self, model: nn.Module, tr: Trace, start: int, end: int):
        super().__init__()
        mods = dict(model.named_modules())
        names: list[str] = []
        # glue before a node belongs to it: a block's input is the previous node's output
        for j in range(start, end + 1):
            names += tr.glue[j] + [tr.nodes[j]]
        self.names = names
        self.body = nn.Sequential(*[copy.deepcopy(mods[n]) for n in names])

    def forward(self, x):
        for m in self.body:
            x = m(x)
            if isinstance(x, (tuple, list)):
                x = x[0]
        return x


class _StopForward(Exception):
    def __init__(self, value):
        self.value = value


class _Capture(nn.Module):
    def forward(self, x):
        raise _StopForward(x)


class OwnStem(nn.Module):
    """The model's own front end (stem, patch embedding, CLS/pos embedding) up to node 0.

    Runs the model's own forward and stops at the first node, so family-specific glue
    (position embeddings, prefix tokens) needs no per-family code. Modules that run after
    node 0 are replaced by ``Identity`` so their parameters are not counted or trained.
    """

    def __init__(self, model: nn.Module, tr: Trace):
        super().__init__()
        model = copy.deepcopy(model)
        keep = set(tr.stem_modules)
        first = tr.nodes[0]
        first_ancestors = {".".join(first.split(".")[:i]) for i in range(1, first.count(".") + 1)}
        replaced: list[str] = []
        for name in [n for n, _ in model.named_modules()]:
            if (not name or name in keep or name in first_ancestors
                    or any(name.startswith(r + ".") for r in replaced + list(keep))):
                continue
            parent, _, attr = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            replacement = _Capture() if name == first else nn.Identity()
            if isinstance(owner, _CONTAINERS):
                owner[int(attr)] = replacement
            else:
                setattr(owner, attr, replacement)
            replaced.append(name)
        self.model = model

    def forward(self, x):
        try:
            self.model(x)
        except _StopForward as stop:
            return stop.value
        raise DissectionError("the stem ran through without reaching the first node")


def verify_chain(model: nn.Module, tr: Trace, x: torch.Tensor, atol: float = 1e-4) -> None:
    """Glue + nodes, run one after another from the stem output, must reproduce the model."""
    outs: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: outs.__setitem__(n, o[0] if isinstance(o, (tuple, list)) else o)) for n in tr.nodes]
    try:
        with torch.inference_mode():
            model.eval()(x)
            h = OwnStem(model, tr).eval()(x)
            for j, n in enumerate(tr.nodes):
                h = _run_glue_node(model, tr, j, h)
                if not bool(torch.isfinite(outs[n]).all()):  # NaN != NaN: say what it is, not a dissection error
                    raise FloatingPointError(f"non-finite features at node {n}; the checkpoint is probably broken.")
                if not torch.allclose(h, outs[n], atol=atol, rtol=1e-3):
                    raise DissectionError(f"re-running node {n} (with glue {tr.glue[j]}) does not reproduce the model's"
                                          f" own output; this family hides computation between blocks.")
    finally:
        for hd in handles:
            hd.remove()


def _run_glue_node(model: nn.Module, tr: Trace, j: int, h: torch.Tensor) -> torch.Tensor:
    for n in tr.glue[j] + [tr.nodes[j]]:
        h = model.get_submodule(n)(h)
        if isinstance(h, (tuple, list)):
            h = h[0]
    return h


@dataclass
class NodeFeatures:
    """Pooled features on the probe images: index 0 is the stem output (input of node 1)."""

    names: list[str]                 # ["<stem>", node_1, ..., node_N]
    feats: list[np.ndarray]          # float32 [n_probe, C_i]
    in_shapes: list[tuple[int, ...]]
    out_shapes: list[tuple[int, ...]]
    fmt: list[str]
    trace: Trace | None = None       # the dissection the features were taken with


def _batch(images, start: int, stop: int, transform: Callable[[Any], torch.Tensor] | None) -> torch.Tensor:
    chunk = images[start:stop]
    return chunk if transform is None else transform(chunk)


def extract(model: nn.Module, images, batch_size: int = 256, progress: bool = False,
            transform: Callable[[Any], torch.Tensor] | None = None) -> NodeFeatures:
    """Dissect the model (trace + ``verify_chain`` on the first images), then ``pooled_features``.

    ``images``: a float tensor, or with ``transform`` any sliceable store of raw images (e.g. the
    uint8 array) that ``transform`` turns into a float batch, one batch at a time.
    """
    model.eval()
    head = _batch(images, 0, 4, transform)
    tr = trace(model, head[:2])
    verify_chain(model, tr, head)
    return pooled_features(model, tr, images, batch_size, progress, transform)


def pooled_features(model: nn.Module, tr: Trace, images, batch_size: int = 256, progress: bool = False,
                    transform: Callable[[Any], torch.Tensor] | None = None) -> NodeFeatures:
    """Run the probe images once; hooks pool every node's output on the fly into preallocated arrays.

    Memory: one batch of input and activations, plus the pooled output itself (N x sum of C,
    written in place: no list of chunks concatenated at the end, which held it twice).
    """
    model.eval()
    fmts = [token_format(model, s) for s in tr.out_shapes]
    stem_fmt = token_format(model, tr.in_shapes[0])
    n = len(images)
    feats: list[np.ndarray | None] = [None] * (len(tr.nodes) + 1)
    at = [0]  # first row of the running batch
    broken: set[int] = set()  # checked per batch: a whole-array isfinite() would allocate N x C once more

    def write(j: int, t: torch.Tensor, fmt: str) -> None:
        p = pool(t, fmt).float()
        if feats[j] is None:
            feats[j] = np.empty((n, p.shape[1]), dtype=np.float32)
        feats[j][at[0]: at[0] + p.shape[0]] = p.numpy()
        if not bool(torch.isfinite(p).all()):
            broken.add(j)

    handles = [model.get_submodule(tr.nodes[0]).register_forward_pre_hook(lambda m, i: write(0, i[0], stem_fmt))]
    for j, name in enumerate(tr.nodes):
        handles.append(model.get_submodule(name).register_forward_hook(
            lambda m, i, o, j=j: write(j + 1, o[0] if isinstance(o, (tuple, list)) else o, fmts[j])))
    try:
        from tqdm.auto import tqdm

        with torch.inference_mode():
            for s in tqdm(range(0, n, batch_size), desc="features", disable=not progress, mininterval=5):
                at[0] = s
                model(_batch(images, s, s + batch_size, transform))
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ValueError("no probe images to extract features from")
    for j, f in enumerate(feats):
        if f is None or j in broken:
            where = "stem" if j == 0 else tr.nodes[j - 1]
            raise FloatingPointError(f"non-finite features at node {where}; the checkpoint is probably broken.")
    return NodeFeatures(["<stem>"] + tr.nodes, feats, [tr.in_shapes[0]] + list(tr.in_shapes),
                        [tr.in_shapes[0]] + list(tr.out_shapes), [stem_fmt] + fmts, tr)


FAMILIES = ("cnn", "transformer")


def _has_attention(m: nn.Module) -> bool:
    return any(isinstance(x, nn.MultiheadAttention) or "Attention" in type(x).__name__ for x in m.modules())


def node_family(model: nn.Module, name: str, fmt: str) -> str:
    """'transformer' for a node that attends (ViT, DeiT, Swin, MobileViT blocks) or runs on tokens, else 'cnn'.

    The authors' `check_valid` rule is about model families (CNN -> Transformer only, Swin being a Transformer),
    not about tensor layouts: Swin's NHWC maps are a Transformer's.
    """
    return "transformer" if fmt == "NLC" or _has_attention(model.get_submodule(name)) else "cnn"


def describe(model: nn.Module, nf: NodeFeatures, tr: Trace) -> dict:
    """The JSON-able dissection of a model that building assemblies needs (results/features/{model}.json)."""
    fams = [node_family(model, n, f) for n, f in zip(tr.nodes, nf.fmt[1:], strict=False)]
    return {"names": nf.names, "glue": tr.glue, "stem_modules": tr.stem_modules,
            "in_shapes": [list(s) for s in nf.in_shapes], "out_shapes": [list(s) for s in nf.out_shapes],
            "fmt": nf.fmt, "family": [fams[0]] + fams,  # the stem takes its first node's family
            "num_prefix_tokens": int(getattr(model, "num_prefix_tokens", 0) or 0)}
