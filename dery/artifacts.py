"""Fine-tuned assemblies as self-describing artifacts: safetensors weights, a versioned JSON spec, a model card.

Beside a spec ``X.json`` live ``X.safetensors`` (the assembly's state dict), ``X.card.md`` (the
model card) and, when exported, ``X.onnx`` and ``X.torchscript.pt``. The spec carries what a
rebuild needs with dery installed and nothing else: per source model its timm ``arch`` and
``kwargs`` and the dissection the features stage found (node names, glue, stem modules,
shapes, formats, prefix tokens); per block its node range and weights hash; the stem,
adapters and head with their tensor layouts; the input preprocessing; the numbers; and the
logits of four real test images, so any copy can be checked on any machine.

Rebuilding creates each source model at random init (timm, ``pretrained=False``), cuts it
exactly as ``stitching.build`` does, and loads the saved weights strictly: no zoo checkpoint
and no ``results/`` file is read.

The exports live in ``dery.export``, the model card in ``dery.model_card``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import export
from .atomic import write_json
from .integrity import sha256 as sha256_file
from .model_card import model_card

FORMAT = "dery.assembly"
FORMAT_VERSION = 1  # bump when a spec written by this dery could not be read by an older one
# Fashion-MNIST label order (Xiao et al. 2017); the dataset is MIT-licensed by Zalando Research
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
REFERENCE_IMAGES = 4  # real test images whose logits the spec records


class ArtifactError(ValueError):
    """An artifact that cannot be loaded as it is; the message names the file and the fix."""


@dataclass(frozen=True)
class ArtifactPaths:
    spec: Path
    weights: Path
    card: Path
    onnx: Path
    torchscript: Path


def paths(spec_path: str | os.PathLike) -> ArtifactPaths:
    """The files of one artifact, named after its spec (``X.json`` -> ``X.safetensors``, ``X.card.md``, ...)."""
    spec = Path(spec_path)
    stem = spec.with_suffix("")
    return ArtifactPaths(spec, Path(f"{stem}.safetensors"), Path(f"{stem}.card.md"), Path(f"{stem}.onnx"),
                         Path(f"{stem}.torchscript.pt"))


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of named tensors (names, dtypes, shapes, bytes): equal weights give equal hashes in any file layout."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------- input

def fashion_mnist_input() -> dict[str, Any]:
    """How ``dery.data.to_images`` turns a 28x28 uint8 image into the network's input, as data."""
    from . import data as D

    raw = 28
    return {"layout": "NCHW", "dtype": "float32", "channels": 3, "height": D.IMAGE_SIZE, "width": D.IMAGE_SIZE,
            "raw": {"height": raw, "width": raw, "dtype": "uint8", "mode": "grayscale, white object on black"},
            "divide_by": 255.0, "pad": (D.IMAGE_SIZE - raw) // 2, "pad_value": 0.0, "mean": D.MEAN, "std": D.STD,
            "steps": f"pixels / 255 -> zero-pad {raw}x{raw} to {D.IMAGE_SIZE}x{D.IMAGE_SIZE} -> (x - mean) / std -> "
                     "repeat the gray channel 3 times"}


def _as_uint8_stack(images: Any, raw_hw: tuple[int, int]) -> np.ndarray:
    """[N, H, W] uint8 from a path, a PIL image, an array/tensor of uint8 pixels, or a list of them."""
    if isinstance(images, (list, tuple)):
        return np.concatenate([_as_uint8_stack(im, raw_hw) for im in images])
    if isinstance(images, (str, os.PathLike)):
        from PIL import Image

        with Image.open(images) as im:
            return _as_uint8_stack(im.copy(), raw_hw)
    if type(images).__module__.startswith("PIL."):
        im = images.convert("L")
        if im.size != (raw_hw[1], raw_hw[0]):
            im = im.resize((raw_hw[1], raw_hw[0]), resample=2)  # 2 = bilinear
        return np.asarray(im, dtype=np.uint8)[None]
    arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype != np.uint8:
        raise ArtifactError(f"preprocess takes uint8 pixels (0-255), a PIL image or an image file; got dtype "
                            f"{arr.dtype}. Convert with (x * 255).round().astype(np.uint8) if your pixels are in "
                            "[0, 1].")
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or tuple(arr.shape[1:]) != tuple(raw_hw):
        raise ArtifactError(f"preprocess takes grayscale images of {raw_hw[0]}x{raw_hw[1]} pixels "
                            f"([H, W] or [N, H, W]); got shape {tuple(arr.shape)}. Pass a PIL image or a file to "
                            "have it resized.")
    return arr


def preprocess(images: Any, spec: dict[str, Any] | None = None) -> torch.Tensor:
    """Raw images -> the float tensor the assembly takes, following ``spec["input"]`` (default: Fashion-MNIST's).

    ``images``: an image file, a PIL image (converted to grayscale and resized), or uint8 pixels
    [H, W] / [N, H, W]; or a list of these. Gives exactly ``dery.data.to_images`` on Fashion-MNIST.
    """
    inp = (spec or {}).get("input") or fashion_mnist_input()
    x = torch.from_numpy(_as_uint8_stack(images, (inp["raw"]["height"], inp["raw"]["width"])).copy())
    x = x.float().div_(inp["divide_by"])
    p = inp["pad"]
    x = nn.functional.pad(x, (p, p, p, p), value=inp["pad_value"])
    x = (x - inp["mean"]) / inp["std"]
    return x.unsqueeze(1).expand(-1, inp["channels"], -1, -1).contiguous()


# ---------------------------------------------------------------------------------------------- saving

def dissection(features_meta: dict[str, Any]) -> dict[str, Any]:
    """The part of the features stage's JSON that ``stitching.model_info`` needs to cut the model again."""
    keys = ("names", "glue", "stem_modules", "in_shapes", "out_shapes", "fmt", "num_prefix_tokens")
    missing = [k for k in keys if k not in features_meta]
    if missing:
        from .integrity import rebuild_command

        raise ArtifactError(f"the dissection lacks {missing} (written by an older dery); re-run the features stage and "
                            f"what follows: `{rebuild_command('extract_features')}`.")
    return {k: features_meta[k] for k in keys}


def source_entry(zoo_meta: dict[str, Any], features_meta: dict[str, Any],
                 checkpoint_sha256: str | None = None) -> dict[str, Any]:
    """One source model: how to create it (timm arch, kwargs, classes), where it came from, how it is cut."""
    return {"arch": zoo_meta["arch"], "kwargs": zoo_meta.get("kwargs") or {}, "num_classes": zoo_meta["num_classes"],
            "license": zoo_meta.get("license") or "not given", "source": zoo_meta.get("source"),
            "source_classes": zoo_meta.get("classes"), "pretrained_from": zoo_meta.get("pretrained_from"),
            "checkpoint_sha256": checkpoint_sha256, "dissection": dissection(features_meta)}


def _port(p) -> dict[str, Any]:
    return {"fmt": p.fmt, "channels": p.channels, "grid": list(p.grid), "prefix": p.prefix}


def describe(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Stem, block nodes, adapters and head of a built assembly, each with the hash of its weights."""
    from . import stitching as ST

    adapters = []
    for i, a in enumerate(model.adapters):
        h = tensors_sha256(_part(state, f"adapters.{i}."))
        if isinstance(a, ST.Stitch):
            adapters.append({"kind": "stitch", "from": _port(a.src), "to": _port(a.dst), "sha256": h})
        else:
            adapters.append({"kind": "identity", "sha256": h})
    return {"stem_sha256": tensors_sha256(_part(state, "stem.")),
            "block_nodes": [list(b.names) for b in model.blocks],
            "block_sha256": [tensors_sha256(_part(state, f"blocks.{i}.")) for i in range(len(model.blocks))],
            "adapters": adapters,
            "head": {"from": _port(model.head.port), "num_classes": model.head.fc.out_features,
                     "sha256": tensors_sha256(_part(state, "head."))}}


def _write_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    # clone: safetensors refuses tensors that share storage (deep-copied blocks may)
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(tmp),
              metadata={"format": "pt", "dery.format": FORMAT, "dery.format_version": str(FORMAT_VERSION)})
    os.replace(tmp, path)


def _software() -> dict[str, str]:
    import timm

    from . import __version__

    return {"dery": __version__, "torch": torch.__version__, "timm": timm.__version__}


def save_assembly(model: nn.Module, spec_path: str | os.PathLike, *, blocks: list[dict[str, Any]],
                  sources: dict[str, dict[str, Any]], stem: str, adapter_init: str, info: dict[str, Any],
                  reference_images: np.ndarray | None = None, exports: bool = True) -> dict[str, Any]:
    """Write weights, spec, model card (and ONNX + TorchScript exports); returns the spec.

    ``blocks``: the candidate's blocks (model, stage, start, end, set), in order; ``sources``:
    ``source_entry`` per model; ``info``: what the spec and card report besides (id, budget,
    rank, protocol, params, macs, proxy_score, val_acc, test_acc, data, ...). The reference
    images (uint8 [N, 28, 28]) are stored with their logits so any copy can be verified.
    """
    files = paths(spec_path)
    model = model.eval()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _write_weights(state, files.weights)
    parts = describe(model, state)
    used = list(dict.fromkeys(b["model"] for b in blocks))
    spec: dict[str, Any] = {
        **info, "format": FORMAT, "format_version": FORMAT_VERSION, "stem": stem, "adapter_init": adapter_init,
        "blocks": [{**b, "nodes": nodes, "sha256": h}
                   for b, nodes, h in zip(blocks, parts["block_nodes"], parts["block_sha256"], strict=False)],
        "sources": {m: sources[m] for m in used},
        "stem_module": {"mode": stem, "model": blocks[0]["model"], "sha256": parts["stem_sha256"]},
        "adapters": parts["adapters"], "head": parts["head"], "input": fashion_mnist_input(),
        "classes": FASHION_MNIST_CLASSES[: parts["head"]["num_classes"]],
        "weights": {"file": files.weights.name, "sha256": sha256_file(files.weights),
                    "bytes": files.weights.stat().st_size, "tensors": len(state)},
        "software": _software(),
    }
    if reference_images is not None:
        ref = np.ascontiguousarray(reference_images[:REFERENCE_IMAGES], dtype=np.uint8)
        x = preprocess(ref, spec)
        with torch.no_grad():
            logits = model(x)
        spec["reference"] = {"images_uint8_base64": base64.b64encode(ref.tobytes()).decode(), "shape": list(ref.shape),
                             "logits": logits.tolist()}
        if exports:
            spec["exports"] = export.export_all(model, files.onnx, files.torchscript, x, logits)
    write_json(files.spec, spec)
    files.card.write_text(model_card(spec))
    return spec


# ---------------------------------------------------------------------------------------------- loading

def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The spec at ``path``, refused if it is not a dery assembly, is from a newer dery, or records a skipped job."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read the assembly spec {path} ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(spec, dict):
        raise ArtifactError(f"{path} is not a dery assembly spec (no JSON object).")
    if "skipped" in spec:
        raise ArtifactError(f"{path} records no trained assembly: {spec['skipped']}. Pick another rank, or raise the "
                            "budget or `reassembly.max_candidates` in the params file.")
    if spec.get("format") != FORMAT or not isinstance(spec.get("format_version"), int):
        raise ArtifactError(f"{path} is not a dery assembly spec (no `format: {FORMAT}` with an integer "
                            "`format_version`); pass the .json written beside the .safetensors by the finetune stage.")
    if spec["format_version"] > FORMAT_VERSION:
        from . import __version__

        raise ArtifactError(f"{path} has format_version {spec['format_version']}, but this dery ({__version__}) "
                            f"reads up to {FORMAT_VERSION}. Upgrade dery to the version that wrote it "
                            f"({spec.get('software', {}).get('dery', 'see its `software` field')}), or re-export the "
                            "assembly with this one.")
    return spec


def best_spec(folder: str | os.PathLike) -> Path:
    """The spec in ``folder`` (one budget's fine-tuning outputs) with the highest validation accuracy.

    Validation, not test, accuracy picks it: the test set stays untouched by model selection.
    Ties go to the better proxy rank, then to the protocol name (FT before FZ).
    """
    folder = Path(folder)
    found = []
    for p in sorted(folder.glob("*.json")):
        try:
            spec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(spec, dict) and spec.get("format") == FORMAT and "skipped" not in spec:
            found.append((-float(spec.get("val_acc", -1)), spec.get("rank", 0), str(spec.get("protocol", "")), p))
    if not found:
        raise ArtifactError(f"no trained dery assembly spec in {folder}; run the workflow (`snakemake --cores all`) "
                            "or pass a spec file (results/finetune/<budget>/rank<r>_<FZ|FT>.json).")
    return min(found)[-1]


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        return best_spec(path)
    if path.suffix == ".safetensors":
        return path.with_suffix(".json")
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; pass an assembly spec (.json), its .safetensors, or a budget's "
                            "folder (results/finetune/<budget>).")
    return path


def rebuild(spec: dict[str, Any]) -> nn.Module:
    """The assembly's architecture from the spec alone (random weights), cut exactly as ``stitching.build`` does."""
    from . import stitching as ST
    from . import zoo as Z

    used = list(dict.fromkeys(b["model"] for b in spec["blocks"]))
    infos = {}
    for m in used:
        src = spec["sources"][m]
        infos[m] = ST.model_info(Z.create(src["arch"], src["num_classes"], src["kwargs"]).eval(), src["dissection"])
    # random adapter init: the saved weights overwrite it, and no probe features are needed
    model, _ = ST.build({"blocks": spec["blocks"]}, infos, spec["head"]["num_classes"], spec["stem"], "random", 0,
                        spec["input"]["height"])
    built = describe(model, {})
    for i, (want, got) in enumerate(zip(spec["adapters"], built["adapters"], strict=False)):
        if {k: v for k, v in want.items() if k != "sha256"} != {k: v for k, v in got.items() if k != "sha256"}:
            raise ArtifactError(f"adapter {i} rebuilds as {got} but the spec records {want}: this dery cuts the models "
                                f"differently from the one that wrote the spec ({spec.get('software')}); install that "
                                "one.")
    if built["block_nodes"] != [b["nodes"] for b in spec["blocks"]]:
        raise ArtifactError(f"the blocks rebuild with nodes {built['block_nodes']}, the spec records "
                            f"{[b['nodes'] for b in spec['blocks']]}; install the versions in its `software` field.")
    return model


def load_assembly(path: str | os.PathLike) -> nn.Module:
    """A fine-tuned assembly as a plain ``torch.nn.Module`` in eval mode (the spec is on ``.dery_spec``).

    ``path``: the spec (.json), its weights (.safetensors), or a budget's folder (its best
    assembly by validation accuracy). Refuses weights whose sha256 differs from the spec and
    specs from a newer format version. Needs neither the zoo checkpoints nor ``results/``.
    """
    from safetensors.torch import load_file

    spec_path = _resolve(path)
    spec = read_spec(spec_path)
    weights = spec_path.parent / spec["weights"]["file"]
    if not weights.is_file():
        raise ArtifactError(f"{spec_path} names weights {weights}, which do not exist; keep the .safetensors beside "
                            "its spec.")
    actual = sha256_file(weights)
    if actual != spec["weights"]["sha256"]:
        raise ArtifactError(f"weights {weights} do not match their spec {spec_path}: sha256 {actual[:16]}..., the spec "
                            f"expects {spec['weights']['sha256'][:16]}.... One of the two was changed or they come "
                            "from different runs; restore the pair written together, or rebuild both with "
                            f"`snakemake --cores all --forcerun {spec_path}` in the project that made them.")
    state = load_file(str(weights))
    _check_part_hashes(spec, state, spec_path)
    with torch.random.fork_rng():  # building seeds torch; leave the caller's random state as it was
        model = rebuild(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"weights {weights} do not fit the network rebuilt from {spec_path} ({str(exc)[:300]}). "
                            f"It was written with {spec.get('software')}; install those versions of timm and torch."
                            ) from exc
    model.dery_spec = spec
    return model.eval()


def _check_part_hashes(spec: dict[str, Any], state: dict[str, torch.Tensor], spec_path: Path) -> None:
    want = {"stem": spec["stem_module"]["sha256"], "head": spec["head"]["sha256"],
            **{f"blocks.{i}": b["sha256"] for i, b in enumerate(spec["blocks"])},
            **{f"adapters.{i}": a["sha256"] for i, a in enumerate(spec["adapters"])}}
    for prefix, h in want.items():
        if tensors_sha256(_part(state, prefix + ".")) != h:
            raise ArtifactError(f"the weights of `{prefix}` do not match the hash in {spec_path}; the spec was edited "
                                "or mixed with another assembly's. Restore the spec written with these weights.")


def reference_check(model: nn.Module, spec: dict[str, Any] | None = None) -> float:
    """Max |logit difference| of ``model`` against the logits the spec recorded on its reference images."""
    spec = spec or model.dery_spec
    with torch.no_grad():
        out = model(preprocess(reference_images(spec), spec))
    return float((out - torch.tensor(spec["reference"]["logits"])).abs().max())


def reference_images(spec: dict[str, Any]) -> np.ndarray:
    """The uint8 test images stored in the spec (decoded from base64)."""
    ref = spec.get("reference")
    if not ref:
        raise ArtifactError(f"the spec of {spec.get('id', 'this assembly')} records no reference images; re-save it "
                            "with `reference_images`.")
    return np.frombuffer(base64.b64decode(ref["images_uint8_base64"]), dtype=np.uint8).reshape(ref["shape"]).copy()
