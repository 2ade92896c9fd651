"""Block costs, and the feasible assemblies of one budget (exact enumeration, optimum certified by SCIP)."""
from __future__ import annotations

import time

from .. import reassembly as R
from .. import tracking as T
from ..atomic import write_json
from ._io import NUM_CLASSES, _infos, _json


def block_costs(partition_json: str, ckpt_dir: str, feat_dir: str, stem: str, out: str) -> None:
    part = _json(partition_json)
    infos = _infos(sorted({b["model"] for b in part["blocks"]}), ckpt_dir, feat_dir, with_feats=False)
    write_json(out, R.compute_costs(part, infos, NUM_CLASSES, stem))


def reassemble(costs_json: str, budget: dict, cfg: dict, seed: int, out: str, out_metrics: str) -> None:
    inst = R.instance_from_costs(_json(costs_json))
    t0 = time.perf_counter()
    limits = budget["params_m"] * 1e6, budget["macs_m"] * 1e6
    keep_single = cfg.get("single_model", "drop") == "keep"
    cands = R.enumerate_assemblies(inst, *limits, cfg["max_candidates"], cfg["forbid"], seed, budget["name"],
                                   method=cfg["search"], keep_single=keep_single)
    # SCIP certifies the walk's first assembly: the same optimum from the 0-1 program (paper Eqs. 8-11). With
    # search: scip the first assembly already is SCIP's optimum.
    best = cands[0] if cfg["search"] == "scip" else R.solve_optimal(inst, *limits, cfg["forbid"], seed, keep_single)
    if best is None or abs(best["surrogate"] - cands[0]["surrogate"]) > 1e-6 * max(1.0, abs(best["surrogate"])):
        raise RuntimeError(f"budget {budget['name']}: the enumeration's best surrogate {cands[0]['surrogate']:.6f} "
                           f"differs from SCIP's optimum {best and best['surrogate']}; this is a bug in dery, please "
                           f"report it with {costs_json}.")
    for i, c in enumerate(cands):
        c["id"] = f"{budget['name']}-c{i:03d}"
    write_json(out, {"budget": budget, "candidates": cands})
    write_json(out_metrics, T.record(f"reassembly/{budget['name']}", {"stage": "reassembly", "budget": budget["name"]},
                                       {"budget": budget, **cfg}, {"candidates": len(cands),
                                                                   "scip_optimum": best["surrogate"],
                                                                   "seconds": time.perf_counter() - t0}))
