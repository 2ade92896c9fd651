"""Zoo models: created by timm name, saved as safetensors with a JSON of metadata.

A zoo entry in params is ``{id, arch, source, kwargs, weights}``. ``kwargs`` go to
``timm.create_model`` (e.g. ``img_size``/``patch_size``/``depth`` for a 32-px ViT).
``weights`` (optional) is a local ``.safetensors``/``.pth`` file, loaded the way timm
loads its own (``pretrained_cfg_overlay=dict(file=...)``) so timm's key filters apply.
"""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file

from . import integrity
from .atomic import write_json


class ZooError(ValueError):
    """A zoo entry that cannot be built or loaded; the message names the entry and the fix."""


def check_arch(arch: str) -> None:
    if "." in arch:  # a pretrained tag (resnet50.tv_in1k): the architecture must exist and have that tag
        check_arch(arch.split(".", 1)[0])
        if arch not in timm.list_pretrained(arch.split(".", 1)[0] + ".*"):
            tags = timm.list_pretrained(arch.split(".", 1)[0] + ".*")
            raise ZooError(f"`{arch}`: timm has no such pretrained tag; it has {', '.join(tags) or 'none'}.")
        return
    names = timm.list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else " `timm.list_models('*pattern*')` lists names."
        raise ZooError(f"`{arch}` is not a timm architecture.{hint}")


def create(arch: str, num_classes: int, kwargs: dict[str, Any] | None = None,
           weights: str | os.PathLike | None = None, remap: dict[str, str | None] | None = None,
           pretrained: bool = False) -> torch.nn.Module:
    check_arch(arch)
    kwargs = dict(kwargs or {})
    if weights:
        from . import hub  # safe read, key check (and `remap:`), then timm's own pretrained_cfg_overlay loading

        return hub.create(arch, num_classes, kwargs, weights, remap)
    if pretrained:
        from . import hub

        return hub.create_pretrained(arch, num_classes, kwargs)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pth/.pt/.bin with ``torch.load(weights_only=True)``.

    Never unpickles arbitrary objects: a pickle that carries code is refused with a clear error.
    Accepts the usual wrappers (``state_dict``, ``model``, ``state_dict_ema``).
    """
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"weights file {path} does not exist; fix `weights:` in your params file.")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ZooError(f"weights file {path} cannot be loaded safely ({type(exc).__name__}: {str(exc)[:200]}). "
                       "dery loads checkpoints without executing code: convert it to .safetensors, or to a plain "
                       "state dict saved with torch.save(model.state_dict(), path).") from exc
    for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ZooError(f"weights file {path} holds no state dict of tensors; save one with "
                       "torch.save(model.state_dict(), path).")
    return state


def save(model: torch.nn.Module, path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``path`` (.safetensors) and ``path.with_suffix('.json')`` atomically."""
    path = Path(path)
    tmp = path.with_suffix(".tmp.safetensors")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    os.replace(tmp, path)
    integrity.seal(path)
    write_json(path.with_suffix(".json"), meta)


def load(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a saved zoo model (eval mode) from its safetensors file and JSON."""
    path = Path(path)
    integrity.verify(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    model = create(meta["arch"], meta["num_classes"], meta.get("kwargs"))
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ZooError(f"checkpoint {path} is unreadable ({exc}); rebuild it with "
                       f"`{integrity.rebuild_command(path)}`.") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ZooError(f"checkpoint {path} does not fit `{meta['arch']}`: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}; rebuild it with `{integrity.rebuild_command(path)}`.")
    return model.eval(), meta
