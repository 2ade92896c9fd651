"""ONNX and TorchScript exports of an assembly, each checked against the PyTorch logits.

``features.OwnStem`` ends the source model's forward by raising at the first node. Tracing records only the ops
that ran, so ``torch.jit.trace`` and the TorchScript-based ONNX exporter (``dynamo=False``) handle it.
``torch.export`` in its default non-strict mode rejects the half-run source model, and the dynamo ONNX exporter
only succeeds after falling back to strict mode, at about 15x the time; dery therefore exports TorchScript by
tracing and ONNX with ``dynamo=False``.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .integrity import sha256


def export_torchscript(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> None:
    """Trace to TorchScript; the traced graph takes any batch size at the example's image size."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # shape comparisons (resize: grid already right?) are constants for a fixed input size, as intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, yet follows OwnStem (see top)
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
    traced.save(str(tmp))
    os.replace(tmp, path)


def export_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, opset: int = 17) -> None:
    """ONNX with a dynamic batch axis, input ``images`` and output ``logits`` (TorchScript-based exporter: see top)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is deprecated, yet the one that works
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(model.eval(), (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    os.replace(tmp, path)


def run_onnx(path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": np.ascontiguousarray(images, dtype=np.float32)})[0]



def export_all(model: nn.Module, onnx_path: Path, torchscript_path: Path, x: torch.Tensor,
               logits: torch.Tensor) -> dict[str, Any]:
    """ONNX and TorchScript files, each checked against the PyTorch logits on the reference images.

    An exporter that cannot handle some block is recorded in the spec (and the card) with its error,
    not raised: the fine-tuned weights, the job's real product, must never be lost to an export.
    """
    ref = logits.numpy()

    def onnx() -> dict[str, Any]:
        export_onnx(model, onnx_path, x[:1])
        diff = float(np.abs(run_onnx(onnx_path, x.numpy()) - ref).max())
        return {"file": onnx_path.name, "sha256": sha256(onnx_path), "max_abs_diff": diff,
                "runtime": "onnxruntime", "input": "images", "output": "logits"}

    def torchscript() -> dict[str, Any]:
        export_torchscript(model, torchscript_path, x[:1])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            diff = float((torch.jit.load(str(torchscript_path))(x) - logits).abs().max())
        return {"file": torchscript_path.name, "sha256": sha256(torchscript_path), "max_abs_diff": diff,
                "how": "torch.jit.trace"}

    out: dict[str, Any] = {}
    for name, export in (("onnx", onnx), ("torchscript", torchscript)):
        try:
            out[name] = export()
        except Exception as exc:  # noqa: BLE001 - exporters raise many types; the message is what matters
            logging.getLogger("dery").warning("%s export failed (weights and spec are kept): %s", name, exc)
            out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:500]}"}
    return out
