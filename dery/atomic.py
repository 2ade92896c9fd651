"""Atomic writes: a file appears complete or not at all (temp file + rename), so a killed job never leaves a
half-written output that Snakemake, or the next stage, would take as finished."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON with sorted keys (a stable diff and content hash), numpy scalars written as floats."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)
