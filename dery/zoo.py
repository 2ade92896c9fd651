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

import torch
from safetensors.torch import load_file, save_file

import timm


class ZooError(ValueError):
    """A zoo entry that cannot be built or loaded; the message names the entry and the fix."""


def check_arch(arch: str) -> None:
    names = timm.list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else " `timm.list_models('*pattern*')` lists names."
        raise ZooError(f"`{arch}` is not a timm architecture.{hint}")


def create(arch: str, num_classes: int, kwargs: dict[str, Any] | None = None,
           weights: str | os.PathLike | None = None) -> torch.nn.Module:
    check_arch(arch)
    kwargs = dict(kwargs or {})
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise ZooError(f"weights file {path} for `{arch}` does not exist; fix `weights:` in params.")
        return timm.create_model(arch, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)


def save(model: torch.nn.Module, path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``path`` (.safetensors) and ``path.with_suffix('.json')`` atomically."""
    path = Path(path)
    tmp = path.with_suffix(".tmp.safetensors")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    os.replace(tmp, path)
    write_json(path.with_suffix(".json"), meta)


def load(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a saved zoo model (eval mode) from its safetensors file and JSON."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    model = create(meta["arch"], meta["num_classes"], meta.get("kwargs"))
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ZooError(f"checkpoint {path} is unreadable ({exc}); delete it and re-run to rebuild it.") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ZooError(f"checkpoint {path} does not fit `{meta['arch']}`: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}; delete it and re-run to rebuild it.")
    return model.eval(), meta


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic JSON write: a half-written file is never taken as a finished output."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)
