"""Score and rank one budget's candidates with the training-free proxy."""
from __future__ import annotations

import time

import torch

from .. import stitching as ST
from .. import tracking as T
from .. import zoo as Z
from ._io import NUM_CLASSES, _images, _infos, _json, spec_seed


def _proxy_batches(split: dict, n_batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    x, _ = _images(split, "target_train")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[: n_batches * batch_size]
    return list(x[idx].split(batch_size))

def proxy_rank(candidates_json: str, splits: str, ckpt_dir: str, feat_dir: str, cfg: dict, stem: str, init: str,
               seed: int, out: str, out_metrics: str) -> None:
    from . import proxy as PX

    doc = _json(candidates_json)
    split = _json(splits)
    batches = _proxy_batches(split, cfg["batches"], cfg["batch_size"], seed)
    models = sorted({b["model"] for c in doc["candidates"] for b in c["blocks"]})
    infos = _infos(models, ckpt_dir, feat_dir)
    score_fn = PX.PROXIES[cfg["name"]]
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    for c in tqdm(doc["candidates"], desc="proxy", mininterval=5):
        asm, notes = ST.build(c, infos, NUM_CLASSES, stem, init, spec_seed(seed, c["id"]))
        c["proxy_score"] = score_fn(asm, batches)
        c["adapter_r2"] = notes["adapter_r2"]
    ranked = sorted(doc["candidates"], key=lambda c: (-c["proxy_score"], c["id"]))
    for r, c in enumerate(ranked):
        c["rank"] = r
    Z.write_json(out, {"budget": doc["budget"], "proxy": cfg["name"], "candidates": ranked})
    Z.write_json(out_metrics, T.record(f"proxy/{doc['budget']['name']}", {"stage": "proxy", "budget": doc["budget"]["name"],
                                                                            "proxy": cfg["name"]}, cfg,
                                       {"candidates": len(ranked), "seconds": time.perf_counter() - t0,
                                        "candidates_per_second": len(ranked) / max(time.perf_counter() - t0, 1e-9),
                                        "best_score": ranked[0]["proxy_score"]}))
