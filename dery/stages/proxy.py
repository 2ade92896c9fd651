"""Score one budget's candidates with every registered training-free proxy; rank by the chosen one.

All proxies in ``dery.proxy.PROXIES`` are computed for every candidate (``proxy_scores`` in
ranking.json), so the claims target can report the rank correlation of each one; the ranking
itself uses ``proxy.name``. Images and labels come from the target TRAIN split only (a seeded
draw): the NASWOT-sized batches (``proxy.batches`` x ``proxy.batch_size``) for the activation
and gradient proxies, ``proxy.feature_images`` for the feature proxies (KTA, LogME, linear
probe), whose final features are computed once per candidate. Each proxy call runs under its
own fixed RNG seed, so a score does not depend on which other proxies ran before it.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from .. import stitching as ST
from .. import tracking as T
from ..atomic import write_json
from ._io import NUM_CLASSES, _images, _infos, _json, spec_seed

log = logging.getLogger("dery")


def _proxy_data(split: dict, cfg: dict, seed: int):
    """(batches, labels) for the NASWOT-style proxies and (batches, labels) for the feature proxies."""
    x, y = _images(split, "target_train")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)
    small = idx[: cfg["batches"] * cfg["batch_size"]]
    feat = idx[: min(cfg.get("feature_images", 500), len(x))]
    fb = cfg.get("feature_batch_size", 250)
    return ((list(x[small].split(cfg["batch_size"])), list(y[small].split(cfg["batch_size"]))),
            (list(x[feat].split(fb)), list(y[feat].split(fb))))


def score_candidate(asm, names: list[str], probe, feats, seed: int, timings: dict | None = None) -> dict:
    """Every proxy in ``names`` on one built network; a proxy that fails scores None (logged)."""
    from .. import proxy as PX

    scores: dict[str, float | None] = {}
    features = None
    for name in names:
        t0 = time.perf_counter()
        try:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                if name in PX.ALL_FEATURE_SCORES:  # the bench scores every proxy, the pipeline those of PROXIES
                    if features is None:
                        features = PX.final_features(asm, feats[0])
                    fy = torch.cat(feats[1])
                    fn = PX.ALL_FEATURE_SCORES[name]
                    val = fn(features, fy, seed=seed) if name == "linear_probe" else fn(features, fy)
                else:
                    val = PX.ALL_PROXIES[name](asm, probe[0], probe[1])
            val = float(val)
            scores[name] = val if math.isfinite(val) else None
        except (FloatingPointError, ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
            log.warning("proxy %s failed: %s", name, exc)
            scores[name] = None
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
    return scores


def rank_key(name: str):
    def key(c):
        v = c["proxy_scores"].get(name)
        return (-(v if v is not None else -math.inf), c["id"])
    return key


def proxy_rank(candidates_json: str, splits: str, ckpt_dir: str, feat_dir: str, cfg: dict, stem: str, init: str,
               seed: int, out: str, out_metrics: str, names: list[str] | None = None) -> None:
    from .. import proxy as PX

    doc = _json(candidates_json)
    split = _json(splits)
    probe, feats = _proxy_data(split, cfg, seed)
    names = list(names or (PX.PROXIES if cfg.get("report_all", True) else [cfg["name"]]))
    if cfg["name"] not in names:
        names.insert(0, cfg["name"])
    models = sorted({b["model"] for c in doc["candidates"] for b in c["blocks"]})
    infos = _infos(models, ckpt_dir, feat_dir)
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    build_s = 0.0
    for c in tqdm(doc["candidates"], desc="proxy", mininterval=5):
        tb = time.perf_counter()
        asm, notes = ST.build(c, infos, NUM_CLASSES, stem, init, spec_seed(seed, c["id"]))
        build_s += time.perf_counter() - tb
        c["proxy_scores"] = score_candidate(asm, names, probe, feats, spec_seed(seed, c["id"]), timings)
        v = c["proxy_scores"][cfg["name"]]
        c["proxy_score"] = v if v is not None else float("nan")  # a failed score ranks last
        c["adapter_r2"] = notes["adapter_r2"]
    ranked = sorted(doc["candidates"], key=rank_key(cfg["name"]))
    for r, c in enumerate(ranked):
        c["rank"] = r
    n = max(len(ranked), 1)
    seconds = time.perf_counter() - t0
    write_json(out, {"budget": doc["budget"], "proxy": cfg["name"], "proxies": names,
                       "seconds_per_candidate": {"build": build_s / n, **{k: v / n for k, v in timings.items()}},
                       "candidates": ranked})
    metrics = {"candidates": len(ranked), "seconds": seconds, "candidates_per_second": len(ranked) / max(seconds, 1e-9),
               "best_score": ranked[0]["proxy_score"] if ranked else float("nan"),
               "build_seconds_per_candidate": build_s / n}
    metrics.update({f"{k}_seconds_per_candidate": v / n for k, v in timings.items()})
    write_json(out_metrics, T.record(f"proxy/{doc['budget']['name']}",
                                     {"stage": "proxy", "budget": doc["budget"]["name"], "proxy": cfg["name"]}, cfg,
                                     metrics))
