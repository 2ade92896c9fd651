"""How stable are the discrete choices? The partition and the candidate lists across partition seeds, and
between two finished runs (e.g. the same params on a CPU with and without AVX-512, native kernels).

The pipeline's sets and candidates are discrete functions of real numbers (CKA, costs). If two runs'
CKA agree to 1e-7 but the partition's best restarts are separated by less than that, the sets flip on
noise. The report gives, for each seed, the objective, the stage alignment and how many blocks (model,
cut, set) equal seed 0's; the gap between the best and the runner-up distinct local optimum (a gap
within floating-point noise means a flip is a tie, not a bug); and the overlap of each budget's
candidate list (all, and the first 20 by the program's surrogate) with seed 0's.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import partition as P


def _blocks(doc: dict) -> set[tuple]:
    return {(b["model"], b["start"], b["end"], b["set"]) for b in doc["blocks"]}


def _cands(doc: dict, top: int | None = None) -> set[tuple]:
    cs = doc["candidates"][:top] if top else doc["candidates"]
    return {tuple((b["model"], b["start"], b["end"]) for b in c["blocks"]) for c in cs}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def restart_gap(sim_files: list[str], feature_jsons: list[str], cfg: dict, seed: int) -> dict[str, Any]:
    """Objectives of the distinct local optima the restarts reach: the best, the runner-up, their gap."""
    from .stages._io import _json
    from .stages.partition import _load_pairs

    pairs = _load_pairs(sim_files)
    n_nodes = {(m := _json(j))["model"]: len(m["names"]) - 1 for j in feature_jsons}
    runs = P._solve_batch(P.Similarity(pairs), n_nodes, cfg["K"], cfg["eps"], cfg["iters"],
                          [[seed, r] for r in range(cfg["restarts"])], cfg["one_per_model"])
    optima: dict[tuple, float] = {}
    for cuts, anchors, obj in runs:
        optima[(tuple(sorted((m, tuple(c)) for m, c in cuts.items())), tuple(anchors))] = obj
    cut_optima: dict[tuple, float] = {}
    for (cuts, _), obj in optima.items():
        cut_optima[cuts] = max(obj, cut_optima.get(cuts, -np.inf))
    objs = sorted(cut_optima.values(), reverse=True)
    return {"distinct_cuttings": len(objs), "best": objs[0], "runner_up": objs[1] if len(objs) > 1 else None,
            "gap": objs[0] - objs[1] if len(objs) > 1 else None,
            "restarts_reaching_best": sum(1 for _, _, o in runs if o > objs[0] - 1e-9)}


def across_seeds(results: str | Path, cfg: dict, budgets: list[dict], seeds: list[int],
                 ckpt_dir: str | None = None) -> list[dict[str, Any]]:
    """Re-run the partition (and the candidates of every budget) with each seed, on ``results``' CKA."""
    from .stages import partition as SP
    from .stages import reassembly as SR
    from .stages._io import _json

    res = Path(results)
    sims = sorted(str(p) for p in (res / "similarity").glob("*.vs.*.npz"))
    metas = sorted(str(p) for p in (res / "features").glob("*.json"))
    rows, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for s in seeds:
            part, costs = Path(tmp) / f"sets{s}.json", Path(tmp) / f"costs{s}.json"
            SP.partition(sims, metas, cfg["partition"], s, str(part), str(part) + ".metrics.json")
            SR.block_costs(str(part), ckpt_dir or str(res / "zoo"), str(res / "features"), cfg["stem"], str(costs))
            cands = {}
            for b in budgets:
                out = Path(tmp) / f"cands{s}_{b['name']}.json"
                SR.reassemble(str(costs), b, cfg["reassembly"], cfg["seed"], str(out), str(out) + ".m.json")
                cands[b["name"]] = _json(out)
            doc = _json(part)
            ref = ref or (doc, cands)
            rows.append({"seed": s, "objective": doc["objective"], "alignment": doc["stage_alignment"],
                         "blocks_as_seed0": len(_blocks(doc) & _blocks(ref[0])) / len(doc["blocks"]),
                         "candidates": {b: len(c["candidates"]) for b, c in cands.items()},
                         "overlap_all": {b: _jaccard(_cands(c), _cands(ref[1][b])) for b, c in cands.items()},
                         "overlap_top20": {b: _jaccard(_cands(c, 20), _cands(ref[1][b], 20)) for b, c in cands.items()},
                         "top1_as_seed0": {b: _cands(c, 1) == _cands(ref[1][b], 1) for b, c in cands.items()},
                         **restart_gap(sims, metas, cfg["partition"], s)})
    return rows


def between_runs(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Two finished runs' partitions and candidate lists compared (e.g. native kernels on two CPUs)."""
    from .stages._io import _json

    a, b = Path(a), Path(b)
    pa, pb = _json(a / "partition/equivalence_sets.json"), _json(b / "partition/equivalence_sets.json")
    out = {"alignment": (pa["stage_alignment"], pb["stage_alignment"]), "objective": (pa["objective"], pb["objective"]),
           "same_blocks": len(_blocks(pa) & _blocks(pb)) / len(pa["blocks"]), "budgets": {}}
    for f in sorted((a / "reassembly").glob("*/candidates.json")):
        g = b / "reassembly" / f.parent.name / "candidates.json"
        if g.exists():
            ca, cb = _json(f), _json(g)
            out["budgets"][f.parent.name] = {"candidates": (len(ca["candidates"]), len(cb["candidates"])),
                                             "overlap_all": _jaccard(_cands(ca), _cands(cb)),
                                             "overlap_top20": _jaccard(_cands(ca, 20), _cands(cb, 20))}
    cka = []
    for f in sorted((a / "similarity").glob("*.npz")):
        if (b / "similarity" / f.name).exists():
            with np.load(f) as x, np.load(b / "similarity" / f.name) as y:
                cka.append(float(np.abs(x["cka"] - y["cka"]).max()))
    out["cka_max_abs_diff"] = max(cka) if cka else None
    return out


def markdown(rows: list[dict[str, Any]], other: dict[str, Any] | None = None, label: str = "") -> str:
    budgets = sorted(rows[0]["candidates"]) if rows else []
    md = ["# Stability of the discrete choices" + (f" ({label})" if label else ""), "",
          "Partition re-run with each seed on the same CKA; candidates enumerated for every budget. `blocks = seed 0`: "
          "fraction of blocks (model, cut points, set) equal to seed 0's; overlap: Jaccard index of the candidate "
          "networks; gap: best minus runner-up objective among the distinct cuttings the restarts reached.", "",
          "| seed | objective | stage alignment | blocks = seed 0 | restarts at best | runner-up gap | "
          + " | ".join(f"{b}: candidates / overlap all / top-20 / same #1" for b in budgets) + " |",
          "|---" * (6 + len(budgets)) + "|"]
    for r in rows:
        gap = "n/a" if r["gap"] is None else f"{r['gap']:.2e}"
        md.append(f"| {r['seed']} | {r['objective']:.6f} | {r['alignment']:.2f} | {r['blocks_as_seed0']:.2f} | "
                  f"{r['restarts_reaching_best']} | {gap} | " + " | ".join(
                      f"{r['candidates'][b]} / {r['overlap_all'][b]:.2f} / {r['overlap_top20'][b]:.2f} / "
                      f"{'yes' if r['top1_as_seed0'][b] else 'no'}" for b in budgets) + " |")
    if other:
        md += ["", "## Between two runs", "",
               f"Max |ΔCKA| {other['cka_max_abs_diff']:.2e}; stage alignment {other['alignment'][0]:.2f} vs "
               f"{other['alignment'][1]:.2f}; objective {other['objective'][0]:.6f} vs {other['objective'][1]:.6f}; "
               f"same blocks {other['same_blocks']:.2f}."]
        md += [f"- {b}: candidates {v['candidates'][0]} vs {v['candidates'][1]}, overlap all {v['overlap_all']:.2f}, "
               f"top-20 {v['overlap_top20']:.2f}" for b, v in other["budgets"].items()]
    return "\n".join(md) + "\n"
