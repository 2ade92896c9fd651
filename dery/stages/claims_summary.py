"""The serial summary of the claims target: reads every result file of the claims jobs
(``dery.stages.claims``), computes claims (a)-(e) with ``dery.claims``, writes results/claims.md,
results/claims/claims.json, the figures and a ``claims.metrics.json`` record, and logs the claims runs to MLflow.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import claims as C
from .. import tracking as T
from ..atomic import write_json
from ._io import _json
from .claims_report import ARM_TITLES, render  # noqa: F401  (both part of this module's API)

log = logging.getLogger("dery")


def _load(path: str) -> dict | None:
    p = Path(path)
    if not p.exists():
        return None
    d = json.loads(p.read_text())
    return None if d.get("skip") or d.get("skipped") else d


def _spec(metrics_path: str) -> dict | None:
    return _load(metrics_path[: -len(".metrics.json")] + ".json")


def _claim_a(sim_files: list[str], metas: dict, permutations: int, seed: int, fig: str | None) -> dict:
    from .partition import _load_pairs  # verifies each file's checksum

    rng = np.random.default_rng([seed, 5])
    per_pair, mats = {}, {}
    for (a, b), cka in sorted(_load_pairs(sorted(sim_files)).items()):
        if a == b:
            continue
        mats[(a, b)] = cka
        per_pair[f"{a}~{b}"] = C.depth_alignment(cka, rng, permutations)
    if not per_pair:
        return {"pairs": {}, "summary": None}
    summary = C.summarise_depth_alignment(per_pair)
    if fig:
        _heatmaps(mats, fig)
    return {"pairs": {k: {kk: vv for kk, vv in v.items() if kk != "null"} for k, v in per_pair.items()},
            "summary": summary}


def _heatmaps(mats: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(mats)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for ax, ((a, b), m) in zip(axes.flat, sorted(mats.items()), strict=False):
        ax.imshow(m, origin="lower", vmin=0, vmax=1, cmap="magma", aspect="auto",
                  extent=(0, 1, 0, 1))
        ax.plot([0, 1], [0, 1], color="cyan", lw=0.6, ls="--")
        ax.set_title(f"{a} vs {b}", fontsize=7)
        ax.set_xlabel(f"{b} rel. depth", fontsize=6)
        ax.set_ylabel(f"{a} rel. depth", fontsize=6)
        ax.tick_params(labelsize=5)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Linear CKA between nodes (stem = depth 0); dashed: equal relative depth", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _claim_b(partition_json: str, sim_files: list[str], metas: dict, part_cfg: dict, seed: int, draws: int) -> dict:
    from .. import partition as P
    from .partition import _load_pairs

    part = _json(partition_json)
    n_nodes = {k: len(v["names"]) - 1 for k, v in metas.items()}
    k = part_cfg["K"]
    rng = np.random.default_rng([seed, 11])
    observed = C.alignment([b["stage"] for b in part["blocks"]], [b["set"] for b in part["blocks"]])
    dery = C.alignment_against_random(observed, C.random_partition_alignment(
        n_nodes, k, part_cfg["eps"], part_cfg["one_per_model"], rng, draws))
    other = not part_cfg["one_per_model"]
    t0 = time.perf_counter()
    res = P.partition(_load_pairs(sim_files), n_nodes, k, part_cfg["eps"], part_cfg["restarts"], part_cfg["iters"],
                      seed, one_per_model=other)
    alt = C.alignment_against_random(P.stage_alignment(res), C.random_partition_alignment(
        n_nodes, k, part_cfg["eps"], other, rng, draws))
    alt["seconds"] = time.perf_counter() - t0
    alt["set_sizes"] = [sum(res.set_of[b] == j for b in res.blocks) for j in range(k)]
    composition = [[sum(1 for b in part["blocks"] if b["set"] == j and b["stage"] == s) for s in range(k)]
                   for j in range(k)]
    return {"one_per_model": part_cfg["one_per_model"], "pipeline": dery, "alternative": alt,
            "composition": composition, "objective": part.get("objective")}


def _acc(rec: dict | None) -> float | None:
    return None if rec is None else rec["metrics"].get("test_acc")


def _verdict(ci: dict | None, single: str | None = None) -> str:
    """The verdict of a difference; "n/a" when one side is a zoo model re-headed rather than a reassembly."""
    if ci is None:
        return "not measured"
    return "n/a" if single else C.verdict(ci["lo"], ci["hi"])


def _claim_c(tau: dict, scratch: dict, zoo: dict, budgets: dict) -> dict:
    out = {}
    zoo_acc = {m: [_acc(_load(f)) for f in files.values()] for m, files in zoo.items()}
    zoo_params = {}
    for m, files in zoo.items():
        for f in files.values():
            r = _load(f)
            if r:
                zoo_params[m] = r["metrics"].get("params")
                break
    for b in budgets:
        picks = [p for p in (_spec(f) for f in tau.get(b, {}).get(0, {}).values()) if p]
        pick_acc = [p["test_acc"] for p in picks]
        params = picks[0]["params"] if picks else float("nan")
        # a pick that is one zoo model re-headed (reassembly.single_model: keep) says nothing about reassembly: its
        # numbers are reported as its own row, with no verdict
        single = C._single_model(picks[0]["blocks"]) if picks else None
        scr = [_acc(_load(f)) for f in scratch.get(b, {}).values()]
        scr = [x for x in scr if x is not None]
        row = {"pick": C.mean_sd(pick_acc), "pick_params": params, "pick_id": picks[0]["id"] if picks else None,
               "single_model": single, "scratch": C.mean_sd(scr),
               "vs_scratch": C.welch_ci(pick_acc, scr) if pick_acc and scr else None}
        row["vs_scratch_verdict"] = _verdict(row["vs_scratch"], single)
        larger = {m: [x for x in v if x is not None] for m, v in zoo_acc.items()
                  if zoo_params.get(m) is not None and zoo_params[m] >= params}
        row["zoo_equal_or_larger"] = {m: {"acc": C.mean_sd(v), "params": zoo_params[m],
                                          "vs": C.welch_ci(pick_acc, v) if len(pick_acc) and len(v) else None}
                                      for m, v in larger.items() if v}
        for _m, z in row["zoo_equal_or_larger"].items():
            z["verdict"] = _verdict(z["vs"], single)
        out[b] = row
    out["zoo_all"] = {m: {"acc": C.mean_sd([x for x in v if x is not None]), "params": zoo_params.get(m)}
                      for m, v in zoo_acc.items()}
    return out


def _claim_d(tau: dict, names: list[str], chosen: str, n_boot: int, seed: int, fig: str | None,
             tau_seeds: list[int]) -> dict:
    """τ/ρ per proxy against test accuracy: per budget and pooled, per seed and on the seed-mean accuracy; proxy
    selection on validation accuracy (``C.select_proxy``). Zoo models re-headed are left out and listed."""
    # budget -> candidate id -> {"scores", "acc": {seed: test}, "val": {seed: val}}
    rows: dict[str, dict[str, dict]] = {}
    single: dict[str, dict[str, str]] = {}  # budget -> candidate id -> zoo model
    seeds: set[int] = set()
    for b, slots in tau.items():
        for slot, by_seed in slots.items():
            for s, f in by_seed.items():
                if s not in tau_seeds:
                    continue
                spec = _spec(f)
                if not spec:
                    continue
                if m := C._single_model(spec["blocks"]):
                    single.setdefault(b, {})[spec["id"]] = m
                    continue
                r = rows.setdefault(b, {}).setdefault(spec["id"], {"scores": spec.get("proxy_scores", {}), "acc": {},
                                                                   "val": {}})
                r["acc"][s] = spec["test_acc"]
                if spec.get("val_acc") is not None:
                    r["val"][s] = spec["val_acc"]
                r["rank"] = spec.get("rank", slot)
                seeds.add(s)
    seeds_l = sorted(seeds)

    def groups(name: str, seed_sel: list[int]):
        out = []
        for _b, cands in sorted(rows.items()):
            xs, ys = [], []
            for c in cands.values():
                accs = [c["acc"][s] for s in seed_sel if s in c["acc"]]
                if not accs:
                    continue
                v = c["scores"].get(name)
                xs.append(float("nan") if v is None else v)
                ys.append(float(np.mean(accs)))
            out.append((xs, ys))
        return out

    result: dict[str, Any] = {"n_per_budget": {b: len(c) for b, c in rows.items()}, "seeds": seeds_l, "proxies": {},
                              "single_model": single}
    for name in names:
        entry = {"pooled_mean_acc": C.rank_correlation(groups(name, seeds_l), n_boot, seed)}
        entry["per_budget"] = {b: C.rank_correlation([g], n_boot, seed)
                               for b, g in zip(sorted(rows), groups(name, seeds_l), strict=True)}
        entry["per_seed"] = {s: C.rank_correlation(groups(name, [s]), n_boot, seed)["tau"] for s in seeds_l}
        pm = entry["pooled_mean_acc"]
        entry["verdict"] = C.verdict(pm["tau_lo"], pm["tau_hi"])
        result["proxies"][name] = entry
    assemblies = {b: {i: {"scores": c["scores"], "val_acc": float(np.mean(list(c["val"].values()))),
                          "test_acc": float(np.mean(list(c["acc"].values())))} for i, c in cands.items() if c["val"]}
                  for b, cands in rows.items()}
    sel = C.select_proxy(assemblies, names, chosen, seed)
    result["selection"] = None if sel is None else sel.__dict__
    # the best-ranked assembly under each proxy, among those fine-tuned: what picking by it would have given
    result["pick_by_proxy"] = {}
    for name in names:
        got = {}
        for b, cands in rows.items():
            scored = [c for c in cands.values() if c["scores"].get(name) is not None and c["acc"]]
            if scored:
                best = max(scored, key=lambda c: c["scores"][name])
                got[b] = float(np.mean(list(best["acc"].values())))
        result["pick_by_proxy"][name] = got
    result["oracle"] = {b: float(max(np.mean(list(c["acc"].values())) for c in cands.values() if c["acc"]))
                        for b, cands in rows.items() if any(c["acc"] for c in cands.values())}
    if fig and rows:
        _scatter(rows, names, fig)
    return result


def _scatter(rows: dict, names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted(rows)
    fig, axes = plt.subplots(len(budgets), len(names), figsize=(2.4 * len(names), 2.2 * len(budgets)), squeeze=False)
    for i, b in enumerate(budgets):
        for j, name in enumerate(names):
            ax = axes[i][j]
            pts = [(c["scores"].get(name), np.mean(list(c["acc"].values()))) for c in rows[b].values() if c["acc"]]
            pts = [(x, y) for x, y in pts if x is not None]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=8)
            ax.set_title(f"{b}: {name}", fontsize=7)
            ax.tick_params(labelsize=5)
            if j == 0:
                ax.set_ylabel("test acc", fontsize=6)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _claim_e(tau: dict, arms: dict, budgets: dict) -> dict:
    """The pick over its seeds against each random arm, one sample per distinct network of the arm."""
    out = {}
    for b in budgets:
        picks = [p for p in (_spec(f) for f in tau.get(b, {}).get(0, {}).values()) if p]
        pick = [p["test_acc"] for p in picks]
        single = C._single_model(picks[0]["blocks"]) if picks else None
        row = {"pick": C.mean_sd(pick), "pick_id": picks[0]["id"] if picks else None, "single_model": single}
        for arm, by_budget in arms.items():
            specs = [p for p in (_spec(f) for f in by_budget.get(b, {}).values()) if p]
            r = C.arm_comparison(pick, picks[0]["blocks"] if picks else None,
                                 [(p["blocks"], p["test_acc"]) for p in specs])
            r["verdict"] = _verdict(r["vs_pick"], single)
            r["ids"], r["seeds"] = [p["id"] for p in specs], sorted({p.get("seed") for p in specs if "seed" in p})
            row[arm] = r
        out[b] = row
    return out


def summarise_claims(manifest: dict, sim_files: list[str], feature_jsons: list[str], partition_json: str,
                     ranking_jsons: list[str], cfg: dict, tracking_uri: str, experiment: str, params_hash: str,
                     out_md: str, out_json: str, out_metrics: str, fig_dir: str) -> None:
    t0 = time.perf_counter()
    metas = {(m := _json(j))["model"]: m for j in feature_jsons}
    cl = cfg["claims"]
    seed = cfg["seed"]
    budgets = {b["name"]: b for b in cfg["budgets"]}
    tau = {b: {int(s): {int(k): v for k, v in d.items()} for s, d in slots.items()}
           for b, slots in manifest["tau"].items()}
    rankings = {(d := _json(f))["budget"]["name"]: d for f in ranking_jsons}
    names = sorted({n for d in rankings.values() for n in d.get("proxies", [])} or {cfg["proxy"]["name"]})
    chosen = cfg["proxy"]["name"]

    a = _claim_a(sim_files, metas, cl["permutations"], seed, str(Path(fig_dir) / "cka_heatmaps.png"))
    b = _claim_b(partition_json, sim_files, metas, cfg["partition"], seed, cl["permutations"])
    c = _claim_c(tau, {k: {int(s): f for s, f in v.items()} for k, v in manifest["scratch"].items()},
                 {k: {int(s): f for s, f in v.items()} for k, v in manifest["zoo"].items()}, budgets)
    d = _claim_d(tau, names, chosen, cl["bootstrap"], seed, str(Path(fig_dir) / "proxy_vs_accuracy.png"),
                 [seed + i for i in range(cl["tau_seeds"])])
    e = _claim_e(tau, {arm: {bb: {int(k): f for k, f in v.items()} for bb, v in per.items()}
                       for arm, per in manifest["arms"].items()}, budgets)
    cost = {bname: r.get("seconds_per_candidate", {}) for bname, r in rankings.items()}
    doc = {"a": a, "b": b, "c": c, "d": d, "e": e, "proxy_seconds_per_candidate": cost,
           "candidates": {bname: len(r["candidates"]) for bname, r in rankings.items()},
           "protocol": cl["protocol"], "chosen_proxy": chosen, "config": cl}
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    write_json(out_json, _jsonable(doc))
    md = render(doc, cfg, fig_dir)
    Path(out_md).write_text(md)

    # one summary record (claims.metrics.json) + the claims fine-tuning runs, logged by this job
    headline = headline_metrics(doc)
    summary_rec = T.record("claims", {"stage": "claims", "claim": "summary", **verdict_tags(doc)},
                           {"claims": cl, "proxy": cfg["proxy"]}, headline)
    write_json(out_metrics, summary_rec)
    recs, jobs = [summary_rec], {"claims": T.job_of(out_metrics)}
    for f in _all_files(manifest):
        r = _load(f)
        if r is None:
            continue
        if not r["key"].startswith("claims/"):  # a main-run record reused for the base seed: re-key a copy
            r = {**r, "key": "claims/reused/" + r["key"], "tags": {**r["tags"], "stage": "claims", "claim": "reused"}}
        recs.append(r)
        jobs[r["key"]] = T.job_of(f)  # the run shows its job's times, rule and benchmark figures
    try:
        stats_ = T.ingest(recs, tracking_uri, experiment, {"dery.params_hash": params_hash,
                                                           "dery.git_commit": T.git_commit(),
                                                           T.GIT_COMMIT: T.git_commit(short=False)}, jobs=jobs)
        log.info("claims: MLflow %s (%.1fs)", stats_, time.perf_counter() - t0)
    except Exception as exc:  # the report stands without the tracking server
        log.warning("claims: MLflow ingestion failed: %s", exc)


def _all_files(manifest: dict) -> list[str]:
    out = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, str):
            out.append(x)
    walk(manifest)
    return sorted(set(out))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def headline_metrics(doc: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    if doc["a"]["summary"]:
        s = doc["a"]["summary"]
        m.update({"a_mean_abs_ddepth": s["mean_abs_ddepth"], "a_null_mean": s["null_mean"], "a_p_value": s["p_value"],
                  "a_mean_spearman": s["mean_spearman"]})
    m.update({"b_alignment": doc["b"]["pipeline"]["alignment"], "b_random_mean": doc["b"]["pipeline"]["random_mean"],
              "b_p_value": doc["b"]["pipeline"]["p_value"], "b_alt_alignment": doc["b"]["alternative"]["alignment"]})
    for b, row in doc["c"].items():
        if b == "zoo_all":
            continue
        m[f"c_{b}_pick_mean"] = row["pick"][0]
        m[f"c_{b}_scratch_mean"] = row["scratch"][0]
        if row["vs_scratch"]:
            m[f"c_{b}_diff"] = row["vs_scratch"]["diff"]
    for name, e in doc["d"]["proxies"].items():
        m[f"d_tau_{name}"] = e["pooled_mean_acc"]["tau"]
        m[f"d_rho_{name}"] = e["pooled_mean_acc"]["rho"]
        m[f"d_tau_lo_{name}"] = e["pooled_mean_acc"]["tau_lo"]
        m[f"d_tau_hi_{name}"] = e["pooled_mean_acc"]["tau_hi"]
    for b, row in doc["e"].items():
        for arm in ARM_TITLES:
            if arm in row:
                m[f"e_{b}_{arm}_networks"] = row[arm]["networks"]
                if row[arm]["vs_pick"]:
                    m[f"e_{b}_{arm}_diff"] = row[arm]["vs_pick"]["diff"]
    return {k: (v if v is not None and math.isfinite(v) else float("nan")) for k, v in m.items()}


def verdict_tags(doc: dict) -> dict[str, str]:
    t = {"verdict_a": doc["a"]["summary"]["verdict"] if doc["a"]["summary"] else "not measured",
         "verdict_b": doc["b"]["pipeline"]["verdict"]}
    t["verdict_c"] = ",".join(f"{b}:{r['vs_scratch_verdict']}" for b, r in doc["c"].items() if b != "zoo_all")
    chosen = doc["chosen_proxy"]
    t["verdict_d"] = doc["d"]["proxies"].get(chosen, {}).get("verdict", "not measured")
    t["verdict_e"] = ",".join(f"{b}/{arm}:{r[arm]['verdict']}" for b, r in doc["e"].items()
                              for arm in ARM_TITLES if arm in r)
    return t
