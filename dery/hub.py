"""Local pretrained weights for zoo entries: the paper's zoo without a model hub.

A zoo entry may carry ``weights:`` (a ``.safetensors`` file, or ``.pth``/``.pt``/``.bin`` read
with ``torch.load(weights_only=True)``; nothing is ever unpickled) and ``remap:`` (a dict of
key prefix -> new prefix, ``null`` dropping every key with that prefix), for checkpoints whose
layout differs from timm's (MoCo's ``encoder_q.``, MAE's decoder, mmcls' ``backbone.``).

Loading goes through timm's own path, ``timm.create_model(arch, pretrained=True,
pretrained_cfg_overlay=dict(file=path))``, so the family's checkpoint filter (position-embedding
resampling, patch-embed conversion, ...) and the classifier adaptation apply exactly as for
timm's hub weights. When dery had to change the keys (wrappers, ``module.``, ``remap:``), the
changed state dict goes in through the same door (``pretrained_cfg_overlay=dict(state_dict=...)``).

Before timm sees it, the checkpoint is checked against the architecture (after remapping and the
family's filter): a missing, unexpected or mis-shaped tensor is an error that names the keys and,
when one prefix explains them, the ``remap:`` entry that fixes it. timm itself would load such a
file without complaint whenever the head is replaced (it relaxes ``strict`` then).
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .zoo import ZooError, read_weights

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / DataParallel, torch.compile


class HubError(ZooError):
    """Local weights that cannot be loaded into the architecture; the message names the keys and the fix."""


def read_state(path: str | os.PathLike, remap: Mapping[str, str | None] | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, unwrapped (``state_dict``/``model``/EMA, ``module.``), then remapped."""
    state = read_weights(path)  # refuses missing files, unreadable files and pickles that carry code
    state = strip_wrappers(state)
    return remap_keys(state, remap or {})


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def remap_keys(state: Mapping[str, torch.Tensor], remap: Mapping[str, str | None]) -> dict[str, torch.Tensor]:
    """Rename by prefix, the longest matching prefix winning; a prefix mapped to None drops its keys."""
    prefixes = sorted(remap, key=len, reverse=True)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        p = next((p for p in prefixes if k.startswith(p)), None)
        if p is None:
            new = k
        elif remap[p] is None:
            continue
        else:
            new = remap[p] + k[len(p):]
        if new in out:
            raise HubError(f"`remap:` maps two checkpoint keys onto `{new}`; make the prefixes more specific.")
        out[new] = v
    return out


def _family_filter(model: torch.nn.Module):
    """The checkpoint filter timm applies for this family (by convention ``checkpoint_filter_fn``)."""
    mod = sys.modules.get(type(model).__module__)
    return getattr(mod, "checkpoint_filter_fn", None) or getattr(mod, "_filter_fn", None)


def _apply_filter(state: dict, model: torch.nn.Module) -> dict:
    fn = _family_filter(model)
    if fn is None:
        return state
    try:
        return fn(dict(state), model)
    except TypeError:
        try:
            return fn(dict(state))
        except Exception:
            return state
    except Exception:  # a filter that needs real tensors or other metadata: compare unfiltered
        return state


def classifier_names(model: torch.nn.Module) -> list[str]:
    """Module names of the classification head (from timm's pretrained cfg, else ``get_classifier()``)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(names, str):
        names = [names]
    if names:
        return list(names)
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        for name, m in model.named_modules():
            if m is head and name:
                return [name]
    return []


def _is_head(key: str, heads: list[str]) -> bool:
    return any(key == f"{h}.weight" or key == f"{h}.bias" for h in heads)


def _prefix_hint(unexpected: list[str], wanted: set[str]) -> str:
    """A `remap:` entry that would explain most unexpected keys (a prefix to strip), if there is one."""
    counts: Counter = Counter()
    for k in unexpected:
        parts = k.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in wanted:
                counts[".".join(parts[:i]) + "."] += 1
                break
    if not counts:
        return ""
    top = counts.most_common(3)
    if len(top) == 1:
        prefix, n = top[0]
        return (f" {n} unexpected key(s) fit once `{prefix}` is stripped: add `remap: {{\"{prefix}\": \"\"}}` to "
                "the entry.")
    listed = ", ".join(f"`{p}` ({n} keys)" for p, n in top)
    return (f" Unexpected keys fit once one of these prefixes is stripped: {listed}; keep the encoder you want with "
            f"`remap: {{\"{top[0][0]}\": \"\"}}` (or another of them) and drop the rest with null.")


def fit_problems(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """'' when ``state`` loads into ``model`` (head excepted); else a sentence naming the keys."""
    filtered = _apply_filter(dict(state), model)
    want = {k: v.shape for k, v in model.state_dict().items()}
    heads = classifier_names(model)
    body_want = {k for k in want if not _is_head(k, heads)}
    have = {k for k in filtered if not _is_head(k, heads)}
    missing = sorted(body_want - have)
    unexpected = sorted(have - set(want))
    shapes = sorted(k for k in body_want & have if tuple(filtered[k].shape) != tuple(want[k]))
    if not (missing or unexpected or shapes):
        return ""
    bits = []
    if missing:
        bits.append(f"{len(missing)} of the model's {len(body_want)} tensors are missing (e.g. {missing[:4]})")
    if unexpected:
        bits.append(f"{len(unexpected)} checkpoint tensors have no place in it (e.g. {unexpected[:4]})")
    if shapes:
        bits.append(f"{len(shapes)} have other shapes (e.g. " + ", ".join(
            f"{k}: {tuple(filtered[k].shape)} vs {tuple(want[k])}" for k in shapes[:3]) + ")")
    return "; ".join(bits) + "." + _prefix_hint(unexpected, set(want))


def _head_classes(state: Mapping[str, torch.Tensor], heads: list[str]) -> int:
    for h in heads:
        w = state.get(f"{h}.weight")
        if w is not None and w.ndim >= 1:
            return int(w.shape[0])
    return -1  # no head in the checkpoint (self-supervised): never equal to the model's class count


def create(arch: str, num_classes: int, kwargs: dict[str, Any] | None = None, weights: str | os.PathLike = "",
           remap: Mapping[str, str | None] | None = None) -> torch.nn.Module:
    """``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=...)`` from a local file, checked."""
    import timm

    kwargs = dict(kwargs or {})
    path = Path(weights)
    raw = read_weights(path)
    state = remap_keys(strip_wrappers(raw), remap or {})
    with torch.device("meta"):
        skeleton = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    problem = fit_problems(skeleton, state)
    if problem:
        raise HubError(f"weights file {path} does not fit `{arch}` (kwargs {kwargs}): {problem} Point `weights:` at a "
                       "checkpoint of this architecture, or map its keys with `remap:` (prefix -> prefix, null drops).")
    heads = classifier_names(skeleton)
    # timm keeps the head when the checkpoint's class count equals the model's and drops it otherwise
    overlay: dict[str, Any] = {"num_classes": _head_classes(state, heads)}
    if heads:
        overlay["classifier"] = heads[0] if len(heads) == 1 else tuple(heads)
    if state.keys() == raw.keys() and not remap and not any(k.startswith(WRAPPER_PREFIXES) for k in raw):
        overlay["file"] = str(path)  # timm reads the file itself (torch.load weights_only=True / safetensors)
    else:
        overlay["state_dict"] = state
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return timm.create_model(arch, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay,
                                     **kwargs)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise HubError(f"timm could not load weights file {path} into `{arch}`: {type(exc).__name__}: "
                       f"{str(exc)[:400]}. Check `weights:`/`remap:` of the entry.") from exc


def check(arch: str, kwargs: dict[str, Any] | None, weights: str | os.PathLike,
          remap: Mapping[str, str | None] | None = None) -> str:
    """Pre-flight: '' when the file loads into the architecture; else the problem (for dery.checks)."""
    import timm

    try:
        state = read_state(weights, remap)
    except ZooError as exc:
        return str(exc)
    with torch.device("meta"):
        skeleton = timm.create_model(arch, pretrained=False, num_classes=10, **(kwargs or {}))
    problem = fit_problems(skeleton, state)
    return (f"weights file {weights} does not fit `{arch}`: {problem} Point `weights:` at a checkpoint of this "
            "architecture, or map its keys with `remap:` (prefix -> prefix, null drops).") if problem else ""


def create_pretrained(arch: str, num_classes: int, kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """timm's own hub weights for ``arch`` (``name.tag``); offline, an error that says how to go local."""
    import timm

    try:
        return timm.create_model(arch, pretrained=True, num_classes=num_classes, **(kwargs or {}))
    except Exception as exc:  # no network, no HF cache, gated weights
        raise HubError(f"timm could not fetch the pretrained weights of `{arch}` ({type(exc).__name__}: "
                       f"{str(exc)[:200]}). Offline: download them elsewhere (e.g. `timm.create_model('{arch}', "
                       "pretrained=True)` then `safetensors.torch.save_file(model.state_dict(), path)`), copy the "
                       "file here and set `weights:` to its path (keep `pretrained: false`).") from exc
