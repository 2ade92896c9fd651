"""A run's fingerprint: one hash per stage output, plus the machine and libraries that made them.

Two runs with equal fingerprints computed the same bits at every stage. When they differ,
:func:`compare` names the first stage (in pipeline order) where they part, which is where to look:
the zoo (training kernels), the features, the CKA, the partition's discrete choices, the candidates,
the proxy ranking or the fine-tuned accuracies. Hashes cover content, not files: tensors by name,
dtype, shape and bytes; JSON canonically, without the wall-clock fields (seconds, images per second)
that differ between any two runs.
"""
from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("zoo", "features", "similarity", "partition", "block_costs", "candidates", "proxy", "finetune")
_TIMING = ("second", "time", "elapsed", "wall")  # keys holding a duration or a rate, not a result


def _timing(key: str) -> bool:
    k = key.lower()
    return any(t in k for t in _TIMING)


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not _timing(str(k))}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _arrays_digest(arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for name, a in sorted(arrays, key=lambda t: t[0]):
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def digest(path: str | Path) -> str:
    """Content hash of one stage output (safetensors, npz or JSON)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return _arrays_digest(load_file(str(p)).items())
    if p.suffix == ".npz":
        with np.load(p) as z:
            return _arrays_digest((k, z[k]) for k in z.files)
    if p.suffix == ".json":
        doc = _strip(json.loads(p.read_text()))
        return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return hashlib.sha256(p.read_bytes()).hexdigest()


def environment() -> dict[str, Any]:
    """Library versions, CPU and the kernels in force (as dery.repro sees them in this process)."""
    from importlib import metadata

    from . import repro

    env = repro.in_force()
    for pkg in ("timm", "scipy", "pyscipopt", "safetensors", "torchvision"):
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = None
    env["platform"] = platform.platform()
    return env


def fingerprint(files: dict[str, list[str]]) -> dict[str, Any]:
    """``files``: stage -> its output files. Per file and per stage (a hash of the file hashes)."""
    stages, per_file = {}, {}
    for stage in [s for s in STAGES if s in files] + [s for s in files if s not in STAGES]:
        hashes = {str(f): digest(f) for f in sorted(files[stage])}
        per_file[stage] = hashes
        stages[stage] = hashlib.sha256(json.dumps(sorted(hashes.items())).encode()).hexdigest()[:16]
    return {"stages": stages, "files": per_file, "environment": environment()}


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The first stage (pipeline order) whose hash differs, or None; and one line per stage."""
    lines, first = [], None
    order = [s for s in STAGES if s in a["stages"] or s in b["stages"]]
    order += sorted((set(a["stages"]) | set(b["stages"])) - set(order))
    for s in order:
        ha, hb = a["stages"].get(s), b["stages"].get(s)
        if ha == hb:
            lines.append(f"{s:12s} same      {ha}")
            continue
        first = first or s
        fa, fb = a["files"].get(s, {}), b["files"].get(s, {})
        diff = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
        lines.append(f"{s:12s} DIFFERS   {len(diff)} of {len(set(fa) | set(fb))} files: {', '.join(diff[:4])}"
                     + (" ..." if len(diff) > 4 else ""))
    ea, eb = a.get("environment", {}), b.get("environment", {})
    for k in ("cpu_model", "cpu_avx512f", "torch_cpu_capability", "torch_threads", "torch", "numpy", "timm"):
        if ea.get(k) != eb.get(k):
            lines.append(f"environment  {k}: {ea.get(k)} vs {eb.get(k)}")
    ra, rb = (ea.get("requested") or {}).get("mode"), (eb.get("requested") or {}).get("mode")
    lines.append(f"modes        {ra} vs {rb}")
    return first, lines


def short(fp: dict[str, Any]) -> str:
    """One hash for the whole run (what the summary prints and MLflow tags)."""
    return hashlib.sha256(json.dumps(sorted(fp["stages"].items())).encode()).hexdigest()[:16]
