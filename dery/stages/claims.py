"""Entry points of the claims target's extra fine-tuning jobs (the summary: ``dery.stages.claims_summary``).

The extra jobs reuse ``dery.stages.finetune`` (same training, same test protocol) and rewrite
the record key and tags of what it writes (``claims/...``, stage ``claims``), so they never
replace the main run's rows in MLflow. Nothing here recomputes features, similarity or the
main partition: the random arms of claim (e) draw their own partitions from the cached
similarity matrices. ``summarise_claims`` reads every result file, computes claims (a)-(e) with
``dery.claims``, writes results/claims.md, results/claims/claims.json, the figures and a
``claims.metrics.json`` record, and logs the claims runs to MLflow itself.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import claims as C
from ..atomic import write_json
from . import finetune as FT
from ._io import NUM_CLASSES, _infos, _json, spec_seed

log = logging.getLogger("dery")


# ----------------------------------------------------------------------------- helpers

def spread_rank(slot: int, n_slots: int, n: int) -> int | None:
    """Rank fine-tuned in τ-study slot ``slot``: evenly spread over the n ranked candidates (rank 0
    and the last included); with n <= n_slots simply rank = slot. None: the slot has no candidate."""
    if n <= n_slots:
        return slot if slot < n else None
    return int(round(slot * (n - 1) / (n_slots - 1)))


def _rekey(path: str, key: str, tags: dict[str, Any]) -> None:
    rec = _json(path)
    if rec.get("skip"):
        rec["key"] = key
    else:
        rec["key"] = key
        rec["tags"] = {**rec["tags"], **{k: str(v) for k, v in tags.items()}, "stage": "claims"}
    write_json(path, rec)


# ------------------------------------------------------------------------ fine-tuning jobs

def finetune_slot(ranking_json: str, arm: str, slot: int, n_slots: int, protocol: str, seed: int, splits: str,
                  ckpt_dir: str, feat_dir: str, cfg: dict, stem: str, init: str, out_metrics: str,
                  out_spec: str) -> None:
    """Fine-tune one ranked candidate (τ-study slot, or rank 0 of a random arm) with ``seed``."""
    doc = _json(ranking_json)
    n = len(doc["candidates"])
    rank = spread_rank(slot, n_slots, n) if arm == "tau" else slot
    budget = doc["budget"]["name"]
    key = f"claims/{arm}/{budget}/slot{slot}/{protocol}/seed{seed}"
    if rank is None or rank >= n:
        write_json(out_spec, {"skipped": f"budget {budget} has only {n} candidates", "slot": slot})
        write_json(out_metrics, {"skip": True, "key": key})
        return
    FT.finetune_candidate(ranking_json, rank, protocol, splits, ckpt_dir, feat_dir, cfg, stem, init, seed,
                          out_metrics, out_spec)
    spec = _json(out_spec)
    write_json(out_spec, {**spec, "rank": rank, "slot": slot, "seed": seed, "arm": arm})
    _rekey(out_metrics, key, {"claim": "tau" if arm == "tau" else "random", "arm": arm, "seed": seed, "slot": slot})


def scratch_seed(ranking_json: str, splits: str, ckpt_dir: str, feat_dir: str, zoo_specs: dict, cfg: dict, stem: str,
                 seed: int, out_metrics: str) -> None:
    FT.finetune_scratch(ranking_json, splits, ckpt_dir, feat_dir, zoo_specs, cfg, stem, seed, out_metrics)
    budget = _json(ranking_json)["budget"]["name"]
    _rekey(out_metrics, f"claims/scratch/{budget}/seed{seed}", {"claim": "scratch", "seed": seed})


def zoo_seed(ckpt: str, splits: str, cfg: dict, seed: int, out_metrics: str) -> None:
    FT.finetune_zoo(ckpt, splits, cfg, seed, out_metrics)
    _rekey(out_metrics, f"claims/zoo/{Path(ckpt).stem}/seed{seed}", {"claim": "zoo", "seed": seed})


# ------------------------------------------------------------------------ random arms (e)

def random_partition(sim_files: list[str], feature_jsons: list[str], part_cfg: dict, seed: int, draw: int,
                     out: str) -> None:
    from .. import partition as P
    from .partition import _load_pairs

    pairs = _load_pairs(sim_files)
    metas = {(m := _json(j))["model"]: m for j in feature_jsons}
    n_nodes = {k: len(v["names"]) - 1 for k, v in metas.items()}
    rng = np.random.default_rng([seed, 7919, draw])
    doc = C.random_cut_partition(n_nodes, part_cfg["K"], P.Similarity(pairs), rng)
    for d in doc["blocks"]:
        d["nodes"] = [metas[d["model"]]["names"][d["start"]], metas[d["model"]]["names"][d["end"]]]
    doc["draw"] = draw
    write_json(out, doc)


def random_cut_ranking(costs_json: str, splits: str, ckpt_dir: str, feat_dir: str, budget: dict, reasm_cfg: dict,
                       proxy_cfg: dict, stem: str, init: str, seed: int, out_candidates: str, out_ranking: str) -> None:
    """The pipeline's search (program + chosen proxy) on a random-cut partition."""
    from .proxy import proxy_rank
    from .reassembly import reassemble

    reassemble(costs_json, budget, reasm_cfg, seed, out_candidates, out_candidates + ".metrics.tmp.json")
    Path(out_candidates + ".metrics.tmp.json").unlink(missing_ok=True)
    proxy_rank(out_candidates, splits, ckpt_dir, feat_dir, proxy_cfg, stem, init, seed, out_ranking,
               out_ranking + ".metrics.tmp.json", names=[proxy_cfg["name"]])
    Path(out_ranking + ".metrics.tmp.json").unlink(missing_ok=True)


def random_assembly(costs_json: str, splits: str, ckpt_dir: str, feat_dir: str, budget: dict, forbid: list,
                    proxy_cfg: dict, stem: str, init: str, seed: int, draw: int, tag: str, out: str) -> None:
    """One feasible assembly drawn uniformly (no proxy), scored by every proxy for the record. Never one zoo model
    re-headed: the arm stands for random reassembly."""
    from .. import proxy as PX
    from .. import reassembly as R
    from .. import stitching as ST
    from .proxy import _proxy_data, score_candidate

    inst = R.instance_from_costs(_json(costs_json))
    # the arm's tag is part of the seed: two arms that index same-sized block lists must not draw the same indices
    rng = np.random.default_rng([seed, 104729, draw, *map(ord, f"{budget['name']}/{tag}")])
    got = C.uniform_feasible(inst, budget["params_m"] * 1e6, budget["macs_m"] * 1e6, forbid, rng)
    if got is None:
        raise R.BudgetError(f"budget {budget['name']} admits no assembly on {costs_json}")
    combo, params, macs = got
    c = {"blocks": [{f: b[f] for f in ("model", "stage", "start", "end", "set")} for b in combo],
         "params": params, "macs": macs, "id": f"{budget['name']}-{tag}{draw}"}
    split = _json(splits)
    probe, feats = _proxy_data(split, proxy_cfg, seed)
    infos = _infos(sorted({b["model"] for b in c["blocks"]}), ckpt_dir, feat_dir)
    asm, notes = ST.build(c, infos, NUM_CLASSES, stem, init, spec_seed(seed, c["id"]))
    c["proxy_scores"] = score_candidate(asm, list(PX.PROXIES), probe, feats, spec_seed(seed, c["id"]))
    v = c["proxy_scores"].get(proxy_cfg["name"])
    c["proxy_score"] = v if v is not None else float("nan")
    c["adapter_r2"] = notes["adapter_r2"]
    c["rank"] = 0
    write_json(out, {"budget": budget, "proxy": proxy_cfg["name"], "random_draw": draw, "candidates": [c]})
