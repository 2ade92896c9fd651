"""Entry points of Reassembly-Bench (``snakemake bench``; analysis in ``dery.bench``).

- ``sample_and_score`` (a checkpoint, one job per budget): draws the benchmarked candidates from the budget's
  ILP candidates (not from a proxy's ranking: the bench judges the proxies) and scores each with every proxy of
  ``dery.proxy.ALL_PROXIES`` / ``ALL_FEATURE_SCORES`` plus the low-fidelity proxy, timing each; writes
  ``results/bench/{budget}/sample.json`` (a ranking-shaped file whose candidates are in slot order, the ILP's
  order, so the fine-tuning stages read it as they read a ranking).
- ``finetune_slot`` / ``scratch_slot`` / ``zoo_seed``: the fine-tuning jobs, reusing ``dery.stages.finetune``
  with the bench's own epochs; records keyed ``bench/...`` (stage ``bench``) so they never replace the main
  run's rows in MLflow.
- ``summarise``: the dataset (``bench.csv``), its scoring (``bench.md``, ``bench.json``, figures) and an MLflow
  run holding both.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import bench as BN
from .. import stitching as ST
from .. import tracking as T
from ..atomic import write_json
from . import finetune as FT
from ._io import NUM_CLASSES, _images, _infos, _json, spec_seed
from .claims import _rekey
from .proxy import _proxy_data, score_candidate

log = logging.getLogger("dery")
LOW_FIDELITY = "low_fidelity"


def proxy_names() -> list[str]:
    from .. import proxy as PX

    return sorted({*PX.ALL_PROXIES, *PX.ALL_FEATURE_SCORES}) + [LOW_FIDELITY]


def sample_and_score(candidates_json: str, splits: str, ckpt_dir: str, feat_dir: str, proxy_cfg: dict, bench_cfg: dict,
                     stem: str, init: str, seed: int, out: str) -> None:
    from .. import proxy as PX

    doc = _json(candidates_json)
    budget = doc["budget"]["name"]
    ids = BN.stratified_sample(doc["candidates"], bench_cfg["max_assemblies"], seed, budget)
    chosen = [c for c in doc["candidates"] if c["id"] in set(ids)]  # slot order = the ILP's order
    split = _json(splits)
    probe, feats = _proxy_data(split, proxy_cfg, seed)
    lf = bench_cfg["low_fidelity"]
    val = _images(split, "target_val")
    names = [n for n in proxy_names() if n != LOW_FIDELITY]
    infos = _infos(sorted({b["model"] for c in chosen for b in c["blocks"]}), ckpt_dir, feat_dir)
    timings: dict[str, float] = {}
    for c in chosen:
        s = spec_seed(seed, c["id"])
        asm, _ = ST.build(c, infos, NUM_CLASSES, stem, init, s)
        c["bench_scores"] = score_candidate(asm, names, probe, feats, s, timings)
        t0 = time.perf_counter()
        acc = PX.low_fidelity(asm, probe[0], probe[1], list(val[0].split(500)), list(val[1].split(500)),
                              steps=lf["steps"], lr=lf["lr"], seed=s)
        timings[LOW_FIDELITY] = timings.get(LOW_FIDELITY, 0.0) + time.perf_counter() - t0
        c["bench_scores"][LOW_FIDELITY] = float(acc) if math.isfinite(acc) else None
        c["proxy_score"] = float("nan")  # ranked by no proxy: the fine-tuning record's field; bench_scores has them all
    n = max(len(chosen), 1)
    write_json(out, {"budget": doc["budget"], "of": len(doc["candidates"]),
                     "sampled": "all" if len(chosen) == len(doc["candidates"]) else "one per equal-count params bin",
                     "proxies": proxy_names(), "seconds_per_candidate": {k: v / n for k, v in timings.items()},
                     "candidates": chosen})


def finetune_slot(sample_json: str, slot: int, protocol: str, seed: int, variant: str, splits: str, ckpt_dir: str,
                  feat_dir: str, cfg: dict, stem: str, stitching: dict, out_metrics: str, out_spec: str) -> None:
    """One benchmarked assembly, one protocol, one seed, one adapter variant (``dery.bench``'s stitching)."""
    budget = _json(sample_json)["budget"]["name"]
    init = "random" if variant == "random" else "lstsq"
    cfg = {k: v for k, v in cfg.items() if k != "adapter_training"}  # each variant says its own adapters
    if variant == "trained":
        cfg["adapter_training"] = {"steps": stitching["train_steps"], "lr": stitching["train_lr"],
                                   "batch_size": stitching["train_batch_size"]}
    FT.finetune_candidate(sample_json, slot, protocol, splits, ckpt_dir, feat_dir, cfg, stem, init, seed,
                          out_metrics, out_spec)
    _rekey(out_metrics, f"bench/{budget}/slot{slot}/{protocol}/{variant}/seed{seed}",
           {"bench": "assembly", "seed": seed, "slot": slot, "stitching": variant})


def scratch_slot(sample_json: str, slot: int, splits: str, ckpt_dir: str, feat_dir: str, zoo_specs: dict, cfg: dict,
                 stem: str, seed: int, out_metrics: str) -> None:
    FT.finetune_scratch(sample_json, splits, ckpt_dir, feat_dir, zoo_specs, cfg, stem, seed, out_metrics, index=slot)
    budget = _json(sample_json)["budget"]["name"]
    _rekey(out_metrics, f"bench/{budget}/scratch/slot{slot}/seed{seed}", {"bench": "scratch", "seed": seed})


def zoo_seed(ckpt: str, splits: str, cfg: dict, seed: int, out_metrics: str) -> None:
    FT.finetune_zoo(ckpt, splits, cfg, seed, out_metrics)
    _rekey(out_metrics, f"bench/zoo/{Path(ckpt).stem}/seed{seed}", {"bench": "zoo", "seed": seed})


# ------------------------------------------------------------------------------------ summary

def _leaves(x) -> list[str]:
    return [f for v in x.values() for f in _leaves(v)] if isinstance(x, dict) else [x]


def _acc(path: str) -> tuple[float | None, float | None]:
    rec = _json(path)
    if rec.get("skip"):
        return None, None
    return rec["metrics"].get("val_acc"), rec["metrics"].get("test_acc")


def rows(manifest: dict, samples: dict[str, str]) -> list[dict[str, Any]]:
    """The bench as rows: one per (assembly, protocol, adapter variant) and per baseline, accuracies per seed.

    ``manifest``: {"assembly": {budget: {slot: {protocol: {variant: {seed: metrics file}}}}},
    "scratch": {budget: {slot: {seed: file}}}, "zoo": {model: {seed: file}}}; ``samples``: budget -> sample.json.
    """
    out = []
    docs = {b: _json(p) for b, p in samples.items()}
    for b, slots in manifest["assembly"].items():
        for slot, protos in slots.items():
            c = docs[b]["candidates"][int(slot)]
            for protocol, variants in protos.items():
                for variant, seeds in variants.items():
                    accs = [_acc(f) for _, f in sorted(seeds.items(), key=lambda t: int(t[0]))]
                    out.append({"kind": "assembly", "budget": b, "id": c["id"], "slot": int(slot),
                                "blocks": FT._blocks_text(c), "params": c["params"],
                                "macs": c["macs"], "protocol": protocol, "stitching": variant,
                                "seeds": sorted(int(s) for s in seeds), "scores": c["bench_scores"],
                                "val_acc": [a[0] for a in accs], "test_acc": [a[1] for a in accs]})
    for b, slots in manifest["scratch"].items():
        for slot, seeds in slots.items():
            c = docs[b]["candidates"][int(slot)]
            accs = [_acc(f) for _, f in sorted(seeds.items(), key=lambda t: int(t[0]))]
            out.append({"kind": "scratch", "budget": b, "id": c["id"], "slot": int(slot),
                        "blocks": FT._blocks_text(c), "params": c["params"], "macs": c["macs"], "protocol": "FT",
                        "stitching": "", "seeds": sorted(int(s) for s in seeds), "scores": {},
                        "val_acc": [a[0] for a in accs], "test_acc": [a[1] for a in accs]})
    for m, seeds in manifest["zoo"].items():
        recs = [_json(f) for _, f in sorted(seeds.items(), key=lambda t: int(t[0]))]
        met = recs[0]["metrics"]
        out.append({"kind": "zoo", "budget": "", "id": m, "slot": None,
                    "blocks": recs[0]["tags"]["blocks"], "params": met["params"], "macs": met["macs"],
                    "protocol": "FT", "stitching": "", "seeds": sorted(int(s) for s in seeds), "scores": {},
                    "val_acc": [r["metrics"]["val_acc"] for r in recs],
                    "test_acc": [r["metrics"]["test_acc"] for r in recs]})
    return out


def csv_frame(rs: list[dict[str, Any]], names: list[str]):
    """One row per assembly x protocol x adapter variant (and per baseline): the dataset's public table."""
    import pandas as pd

    seeds = sorted({s for r in rs for s in r["seeds"]})
    table = []
    for r in rs:
        row = {k: r[k] for k in ("kind", "budget", "id", "slot", "blocks", "protocol", "stitching")}
        row.update({"params_M": r["params"] / 1e6, "MACs_M": r["macs"] / 1e6})
        row.update({f"proxy_{n}": r["scores"].get(n) for n in names})
        for s, v, t in zip(r["seeds"], r["val_acc"], r["test_acc"], strict=True):
            row[f"val_acc_seed{s}"], row[f"test_acc_seed{s}"] = v, t
        row["test_acc_mean"] = BN._mean(r["test_acc"])
        table.append(row)
    per_seed = ("val_acc_seed", "test_acc_seed", "test_acc_mean")
    cols = [c for c in table[0] if not c.startswith(per_seed)] if table else []
    cols += [f"{k}_seed{s}" for s in seeds for k in ("val_acc", "test_acc")] + ["test_acc_mean"]
    return pd.DataFrame(table).reindex(columns=cols)


def summarise(manifest: dict, samples: dict[str, str], budgets: list[dict], cfg: dict, fingerprint_json: str,
              tracking_uri: str, experiment: str, out_csv: str, out_json: str, out_md: str, out_metrics: str,
              fig_dir: str) -> None:
    from . import bench_report as BR

    names = proxy_names()
    rs = rows(manifest, samples)
    docs = {b: _json(p) for b, p in samples.items()}
    seconds: dict[str, float] = {}
    for doc in docs.values():  # seconds per candidate, averaged over budgets weighted by candidates
        for k, v in doc["seconds_per_candidate"].items():
            seconds.setdefault(k, []).append((v, len(doc["candidates"])))
    seconds = {k: float(np.average([v for v, _ in vs], weights=[w for _, w in vs])) for k, vs in seconds.items()}
    current = cfg["proxy"]["name"]
    scoring = {p: BN.proxy_table(rs, names, p, seconds, cfg["bench"]["bootstrap"], cfg["seed"], current)
               for p in cfg["bench"]["protocols"]}
    recommended = (scoring.get("FT") or next(iter(scoring.values())))["selection"]
    default = recommended["recommended"] if recommended else current
    by_budget = BN.assemblies_by_budget(rs, "FT" if "FT" in scoring else cfg["bench"]["protocols"][0])
    pick = {b: BN.picks({i: a["scores"] for i, a in asm.items()}, [default])[default] for b, asm in by_budget.items()}
    budget_limits = {b["name"]: b for b in budgets}
    doc = {"fingerprint": _json(fingerprint_json), "cfg": cfg, "proxies": names, "seconds_per_candidate": seconds,
           "scoring": scoring, "default": default, "pick": pick,
           "comparison": BN.pick_comparison(rs, pick, budget_limits),
           "stitching": BN.stitching_comparison(rs, cfg["bench"]["stitching"]["variants"]),
           "sampled": {b: {k: doc[k] for k in ("of", "sampled")} for b, doc in docs.items()}}
    frame = csv_frame(rs, names)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_csv, index=False, float_format="%.6g")
    write_json(out_json, BR.jsonable(doc))
    Path(fig_dir).mkdir(parents=True, exist_ok=True)
    BR.figures(rs, names, pick, fig_dir)
    Path(out_md).write_text(BR.markdown(doc, len(frame)))
    from .. import fingerprint as FP
    from ..integrity import sha256

    files = [out_csv, out_md, out_json, *sorted(str(p) for p in Path(fig_dir).glob("*.png"))]
    # the files' hashes are tags of the record: a changed table is a changed record, logged again
    rec = T.record("bench", {"stage": "bench", "default_proxy": default,
                             "dery.fingerprint": FP.short(doc["fingerprint"]),
                             **{f"sha256.{Path(f).name}": sha256(f) for f in files[:2]}},
                   {"bench": cfg["bench"], "proxy": cfg["proxy"]}, BR.headline(doc))
    write_json(out_metrics, rec)
    recs, jobs = [rec], {"bench": T.job_of(out_metrics)}  # and every bench fine-tuning run, with its job's times
    for f in sorted(_leaves(manifest)):
        r = _json(f)
        if not r.get("skip"):
            recs.append(r)
            jobs[r["key"]] = T.job_of(f)
    try:
        T.ingest(recs, tracking_uri, experiment, {"dery.git_commit": T.git_commit(),
                                                  T.GIT_COMMIT: T.git_commit(short=False)},
                 jobs=jobs, artifacts={"bench": files})
    except T.TrackingError as exc:  # the bench stands on disk without the tracking store
        log.warning("bench: MLflow ingestion failed: %s", exc)
