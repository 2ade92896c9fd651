"""Row 1: feature extraction against a plain ``torch.inference_mode()`` forward pass, and its memory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np
import torch

from .common import ROOT, Result, Row, fmt_s, median_times, probe_uint8, yes, zoo_models

TARGET = 1.15


def _plain(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """The limit: the model's own forward on ready float batches, nothing recorded."""
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            model(x[s: s + batch_size])


def _save(feats: list[np.ndarray], path: str) -> None:
    np.savez(path, **{f"f{i:04d}": f for i, f in enumerate(feats)})


def _compare(name: str, model: torch.nn.Module, raw: np.ndarray, transform, batch_size: int, repeats: int,
             tmp: str) -> dict[str, Any]:
    """Plain forward vs dery's streamed, hooked, pooled pass + npz write, with and without trace + verify."""
    from dery import features as F

    x = transform(raw)                       # the plain pass gets its float batches for free
    tr = F.trace(model, x[:2])
    out = os.path.join(tmp, f"{name}.npz")
    t = median_times({
        "plain": lambda: _plain(model, x, batch_size),
        "stream": lambda: _save(F.pooled_features(model, tr, raw, batch_size, transform=transform).feats, out),
        "extract": lambda: _save(F.extract(model, raw, batch_size, transform=transform).feats, out),
    }, repeats)
    # same numbers whether the images arrive as one float tensor or as uint8 batches converted on the fly
    same = all(np.array_equal(a, b) for a, b in zip(F.extract(model, x, batch_size).feats,
                                                     F.extract(model, raw, batch_size, transform=transform).feats,
                                                     strict=False))
    return {"name": name, "n": len(raw), **t, "identical": same}


def _child_rss(mode: str, n: int) -> dict[str, Any]:
    """Peak resident memory of the pass over n probe images (resnet18), in a fresh process: RSS is sampled every
    millisecond from just before the pass (model, uint8 images and dissection ready) to its end."""
    code = f"""
import json, sys, threading, time
sys.path.insert(0, {str(ROOT)!r})
import psutil, torch, timm
from dery import data as D, features as F
from benchmarks.common import probe_uint8
torch.set_num_threads(1)
torch.manual_seed(0)
model = timm.create_model("resnet18", num_classes=5).eval()
raw = probe_uint8({n})
tr = F.trace(model, D.to_images(raw[:2]))  # the one-off dissection: a fixed transient, measured in the time rows
proc, peak, done = psutil.Process(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.001)
before = proc.memory_info().rss
th = threading.Thread(target=sample); th.start()
if {mode!r} == "stream":
    nf = F.pooled_features(model, tr, raw, 250, transform=D.to_images)
else:  # as the stage did before: every probe image converted into one float tensor first
    nf = F.pooled_features(model, tr, D.to_images(raw), 250)
done.set(); th.join()
print(json.dumps({{"growth": peak[0] - before, "out_bytes": sum(f.nbytes for f in nf.feats)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool, params: dict[str, Any]) -> Result:
    from dery import data as D
    from dery import zoo as Z

    res = Result()
    repeats = 3 if quick else 5
    n32, n224 = (250, 8) if quick else (500, 64)
    raw = probe_uint8(max(n32, n224))
    models = zoo_models(params)
    if quick:
        models = dict(list(models.items())[:2])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            rows.append(_compare(f"{name} (32 px)", model, raw[:n32], D.to_images, 250, repeats, tmp))
        torch.manual_seed(0)
        big = Z.create("resnet18", 5).eval()

        def to224(u: np.ndarray) -> torch.Tensor:
            return torch.nn.functional.interpolate(D.to_images(u), size=224, mode="bilinear", align_corners=False)

        rows.append(_compare("resnet18 (224 px)", big, raw[:n224], to224, 32, max(2, repeats - 2), tmp))
    lines = ["| model | images | plain forward | dery streamed + pooled + written | ratio | with trace + verify | "
             "ratio | identical features |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['n']} | {fmt_s(r['plain'])} | {fmt_s(r['stream'])} | "
                     f"{r['stream'] / r['plain']:.3f}x | {fmt_s(r['extract'])} | {r['extract'] / r['plain']:.3f}x | "
                     f"{yes(r['identical'])} |")
    worst = max(rows, key=lambda r: r["stream"] / r["plain"])
    worst_full = max(rows, key=lambda r: r["extract"] / r["plain"])
    all_same = all(r["identical"] for r in rows)
    res.rows.append(Row("1", f"feature extraction, {len(rows)} timm models (worst: {worst['name']})",
                        fmt_s(worst["stream"]), f"{fmt_s(worst['plain'])} plain inference_mode forward",
                        f"{worst['stream'] / worst['plain']:.2f}x", f"<= {TARGET}x",
                        yes(worst["stream"] / worst["plain"] <= TARGET and all_same)))
    res.rows.append(Row("1", f"... including the one-off trace + verify_chain (worst: {worst_full['name']})",
                        fmt_s(worst_full["extract"]), fmt_s(worst_full["plain"]),
                        f"{worst_full['extract'] / worst_full['plain']:.2f}x", "reported (fixed cost)", "-"))

    # memory: peak RSS at two probe sizes, streamed (now) vs all images converted up front (before)
    small, large = (1000, 4000) if quick else (2000, 16000)
    mem = {(mode, n): _child_rss(mode, n) for mode in ("stream", "tensor") for n in (small, large)}
    per_img = 1 / (large - small) / 1024

    def slope(mode: str) -> float:
        return (mem[(mode, large)]["growth"] - mem[(mode, small)]["growth"]) * per_img

    out_slope = (mem[("stream", large)]["out_bytes"] - mem[("stream", small)]["out_bytes"]) * per_img
    res.rows.append(Row("1", f"memory: extra peak RSS per probe image, {small} vs {large} images (resnet18)",
                        f"{slope('stream'):.1f} KiB/image",
                        f"{slope('tensor'):.1f} KiB/image with all images as one float tensor (the stage before); "
                        f"the pooled output itself is {out_slope:.1f} KiB/image",
                        f"{slope('stream') / max(slope('tensor'), 1e-9):.2f}x",
                        "<= 1.2x the pooled output", yes(slope("stream") <= 1.2 * out_slope)))
    res.notes.append("### Row 1: feature extraction per model\n\nMedian of interleaved repeats. 'plain' runs the model "
                     "on ready float batches under `torch.inference_mode()`; dery streams the uint8 probe images "
                     "(normalised one batch at a time), pools every node's output in forward hooks into preallocated "
                     "arrays and writes the npz; 'with trace + verify' adds `extract()`'s one-off dissection "
                     "(a traced forward, `verify_chain` re-running every node, a deep copy for the stem).\n\n"
                     + "\n".join(lines) + "\n\nExtra peak RSS during extraction (fresh process, resnet18 at 32 px): "
                     + ", ".join(f"{m} {n} images {v['growth'] / 2**20:.0f} MiB" for (m, n), v in mem.items())
                     + ". What still grows with the probe set is the answer itself (the pooled features, "
                     "N x sum of C float32, written once into preallocated arrays) and the uint8 images.")
    return res
