"""Cover-set partition of the whole zoo into K blocks per model and K equivalence sets."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import integrity
from .. import partition as P
from .. import tracking as T
from ..atomic import write_json
from ._io import _json


def _load_pairs(sim_files: list[str]) -> dict[tuple[str, str], np.ndarray]:
    pairs = {}
    for f in sim_files:
        integrity.verify(f)
        a, b = Path(f).name[: -len(".npz")].split(".vs.")
        with np.load(f) as z:
            pairs[(a, b)] = z["cka"]
    return pairs


def partition(sim_files: list[str], feature_jsons: list[str], cfg: dict, seed: int, out: str, out_metrics: str) -> None:
    pairs = _load_pairs(sim_files)
    metas = {(m := _json(j))["model"]: m for j in feature_jsons}
    n_nodes = {k: len(v["names"]) - 1 for k, v in metas.items()}
    t0 = time.perf_counter()
    res = P.partition(pairs, n_nodes, cfg["K"], cfg["eps"], cfg["restarts"], cfg["iters"], seed, cfg["one_per_model"])
    sim = P.Similarity(pairs)
    doc = res.to_json()
    for b, d in zip(res.blocks, doc["blocks"], strict=True):
        d["anchor_similarity"] = sim.block(b, res.anchors[res.set_of[b]])
        d["nodes"] = [metas[b.model]["names"][b.start], metas[b.model]["names"][b.end]]
    doc["stage_alignment"] = P.stage_alignment(res)
    doc["size_bounds"] = {m: P.size_bound(n, cfg["K"], cfg["eps"]) for m, n in n_nodes.items()}
    write_json(out, doc)
    sets_txt = {f"set{j}": "; ".join(f"{b['model']}[{b['nodes'][0]}..{b['nodes'][1]}]" for b in doc["blocks"]
                                     if b["set"] == j) for j in range(cfg["K"])}
    write_json(out_metrics, T.record("partition", {"stage": "partition", **sets_txt}, cfg,
                                       {"objective": res.objective, "stage_alignment": doc["stage_alignment"],
                                        "seconds": time.perf_counter() - t0}))
