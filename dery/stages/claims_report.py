"""The claims target's report: results/claims.md rendered from the computed claims (dery/stages/claims.py).

Text only: every number and verdict comes from the document ``summarise_claims`` builds.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ARM_TITLES = {"cuts": "uniform random cut points, same program and proxy (✗ CKA cuts and sets, ✓ proxy)",
              "rand_cover": "cover-set partition, random feasible assembly (✓ partition, ✗ proxy)",
              "rand_cuts": "uniform random cut points, random feasible assembly (✗ partition, ✗ proxy)"}


def _fmt(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def _ms(t) -> str:
    m, s, n = t
    return "n/a" if n == 0 else f"{m:.4f} ± {_fmt(s, 4)} (n={n})"


def _ci(ci: dict | None, nd: int = 4) -> str:
    if not ci:
        return "n/a"
    return f"{ci['diff']:+.{nd}f} [{_fmt(ci['lo'], nd)}, {_fmt(ci['hi'], nd)}]"


def _zoo_row(model: str) -> str:
    return f"zoo model {model} with a new head, not a reassembly"


def _networks(r: dict) -> str:
    plural = lambda n, w: f"{n} {w}" + ("" if n == 1 else "s")  # noqa: E731
    same = ", incl. the pick's own network" if r["same_as_pick"] else ""
    return f"{plural(r['networks'], 'distinct network')} of {plural(r['draws'], 'draw')}{same}"


def overall_verdicts(doc: dict) -> list[tuple[str, str, str]]:
    """(claim, number, verdict) rows for the summary table."""
    rows = []
    a = doc["a"]["summary"]
    rows.append(("(a) CKA stage-diagonal across families",
                 "n/a" if not a else f"mean abs Δdepth {a['mean_abs_ddepth']:.3f} vs shuffled {a['null_mean']:.3f} "
                                     f"(p={a['p_value']:.3g}; {a['pairs_significant']}/{a['pairs']} pairs p<0.05)",
                 a["verdict"] if a else "not measured"))
    bp = doc["b"]["pipeline"]
    rows.append(("(b) equivalence sets follow stage position",
                 f"alignment {bp['alignment']:.2f} vs random {bp['random_mean']:.2f} (p={bp['p_value']:.3g})",
                 bp["verdict"]))
    for b, r in doc["c"].items():
        if b == "zoo_all":
            continue
        what = f"pick = {_zoo_row(r['single_model'])}," if r.get("single_model") else "reassembled >"
        rows.append((f"(c) {b}: {what} scratch ({doc['protocol']})",
                     f"{_ms(r['pick'])} vs {_ms(r['scratch'])}; diff {_ci(r['vs_scratch'])}", r["vs_scratch_verdict"]))
        for m, z in r["zoo_equal_or_larger"].items():
            what = f"pick = {_zoo_row(r['single_model'])}," if r.get("single_model") else "reassembled"
            rows.append((f"(c) {b}: {what} vs zoo {m} ({z['params'] / 1e6:.2f}M ≥ {r['pick_params'] / 1e6:.2f}M)",
                         f"diff {_ci(z['vs'])}", z["verdict"]))
    chosen = doc["chosen_proxy"]
    for name, e in doc["d"]["proxies"].items():
        pm = e["pooled_mean_acc"]
        rows.append((f"(d) proxy `{name}` ranks assemblies" + (" (pipeline's choice)" if name == chosen else ""),
                     f"τ {_fmt(pm['tau'])} [{_fmt(pm['tau_lo'])}, {_fmt(pm['tau_hi'])}], ρ {_fmt(pm['rho'])}, "
                     f"n={pm['n']}",
                     e["verdict"]))
    for b, r in doc["e"].items():
        pick = f"pick = {_zoo_row(r['single_model'])}," if r.get("single_model") else "pick beats"
        for arm, title in ARM_TITLES.items():
            if arm not in r:
                continue
            rows.append((f"(e) {b}: {pick} {title.split(' (')[0]}",
                         f"{_ms(r['pick'])} vs {_ms(r[arm]['acc'])} ({_networks(r[arm])}); "
                         f"diff {_ci(r[arm]['vs_pick'])}",
                         r[arm]["verdict"]))
            for m, acc in r[arm]["single_model"].items():
                rows.append((f"(e) {b}: {title.split(' (')[0]}, a draw = {_zoo_row(m)}", _ms(acc), "n/a"))
    return rows


def render(doc: dict, cfg: dict, fig_dir: str) -> str:
    cl = doc["config"]
    L = [f"# dery claims: experiment `{cfg['name']}`", "",
         "Measured by `snakemake claims` (workflow/rules/claims.smk) from the cached pipeline results. Accuracies: "
         f"top-1 on the Fashion-MNIST test set, fine-tuning protocol **{doc['protocol']}** with the pipeline's "
         "`finetune` params. Intervals: 95% Welch t for differences of means over seeds / distinct networks, 95% "
         f"percentile bootstrap ({cl['bootstrap']} resamples) for rank correlations. Verdicts are computed: **holds** "
         "= interval above 0 (or permutation p < 0.05), **reversed** = below 0, **inconclusive** = straddles 0, "
         "**n/a** = no interval (fewer than 2 distinct samples on a side, or no spread at all) or a side that is a zoo "
         "model with a new head (one model's blocks in order) rather than a reassembly.", "",
         "## Summary", "", "| claim | number | verdict |", "|---|---|---|"]
    L += [f"| {c} | {n} | **{v}** |" for c, n, v in overall_verdicts(doc)]

    a = doc["a"]
    L += ["", "## (a) CKA has a stage-diagonal structure across families (paper Fig. 5)", "",
          "For every pair of different models, each node (and the stem, depth 0) is matched with its most similar node "
          "(linear CKA) in the other model; |Δdepth| is the gap between their relative depths (both directions). The "
          f"null shuffles the other model's node order ({cl['permutations']} permutations).", ""]
    if a["summary"]:
        s = a["summary"]
        L += [f"Mean |Δdepth| over {s['pairs']} pairs: **{s['mean_abs_ddepth']:.3f}** vs shuffled {s['null_mean']:.3f} "
              f"(gap {s['gap']:.3f}, permutation p = {s['p_value']:.3g}); mean Spearman ρ(depth, matched depth) "
              f"{s['mean_spearman']:.2f}; {s['pairs_significant']}/{s['pairs']} pairs individually p < 0.05. "
              f"Verdict: **{s['verdict']}**.", "",
              "| pair | mean abs Δdepth | shuffled | p | Spearman ρ |", "|---|---|---|---|---|"]
        L += [f"| {k} | {v['mean_abs_ddepth']:.3f} | {v['null_mean']:.3f} | {v['p_value']:.3g} | "
              f"{_fmt(v['spearman'], 2)} |"
              for k, v in sorted(a["pairs"].items())]
        L += ["", f"Heatmaps: `{Path(fig_dir) / 'cka_heatmaps.png'}`."]

    b = doc["b"]
    bp, alt = b["pipeline"], b["alternative"]
    mode = "one block per model per set (dery default)" if b["one_per_model"] else "argmax assignment (authors')"
    other = "argmax assignment (authors')" if b["one_per_model"] else "one block per model per set"
    L += ["", "## (b) Equivalence sets group blocks by stage position (paper §4)", "",
          "Stage alignment = fraction of blocks whose set index equals their stage index. dery keeps real cross-stage "
          "similarity (the authors' code zeroes it by a typo, which forces alignment to 1), so alignment has to "
          f"emerge. Null: {cl['permutations']} random partitions (random cuts within the size bound, random set "
          "labels, sets renumbered by depth exactly as the partition does).", "",
          "| partition | alignment | random mean | random 95th pct | p | verdict |", "|---|---|---|---|---|---|",
          f"| pipeline: {mode} | {bp['alignment']:.3f} | {bp['random_mean']:.3f} | {bp['random_p95']:.3f} | "
          f"{bp['p_value']:.3g} | **{bp['verdict']}** |",
          f"| re-solved: {other} | {alt['alignment']:.3f} | {alt['random_mean']:.3f} | {alt['random_p95']:.3f} | "
          f"{alt['p_value']:.3g} | {alt['verdict']} |", "",
          f"Set sizes under the {other}: {alt['set_sizes']}. Pipeline sets × stages (rows: set, columns: stage): "
          f"{b['composition']}."]

    c = doc["c"]
    L += ["", "## (c) Reassembled vs from scratch and vs zoo models (Fig. 11, Table 9), "
          f"{doc['protocol']}, over seeds", "",
          "`pick` = the pipeline's rank-0 assembly; `scratch` = the same architecture, every weight re-initialised, "
          "trained the same way; zoo models: each fine-tuned from its pretraining (params with the 10-class head).", "",
          "| budget | pick (params) | pick acc | scratch acc | pick − scratch [95% CI] | verdict |",
          "|---|---|---|---|---|---|"]
    for bname, r in c.items():
        if bname == "zoo_all":
            continue
        pick = f"{r['pick_id']} = {_zoo_row(r['single_model'])}" if r.get("single_model") else r["pick_id"]
        L.append(f"| {bname} | {pick} ({_fmt(r['pick_params'] / 1e6, 2)}M) | {_ms(r['pick'])} | {_ms(r['scratch'])} "
                 f"| {_ci(r['vs_scratch'])} | **{r['vs_scratch_verdict']}** |")
    L += ["", "| budget | zoo model (params) | zoo acc | pick − zoo [95% CI] | verdict |", "|---|---|---|---|---|"]
    for bname, r in c.items():
        if bname == "zoo_all":
            continue
        if not r["zoo_equal_or_larger"]:
            L.append(f"| {bname} | (no zoo model is as large as the pick) | | | |")
        for m, z in sorted(r["zoo_equal_or_larger"].items()):
            L.append(f"| {bname} | {m} ({z['params'] / 1e6:.2f}M) | {_ms(z['acc'])} | {_ci(z['vs'])} | "
                     f"{z['verdict']} |")
    L += ["", "All zoo models: " + "; ".join(f"{m} {_ms(z['acc'])}" for m, z in sorted(c["zoo_all"].items())) + "."]

    d = doc["d"]
    L += ["", f"## (d) The training-free proxy ranks assemblies (Fig. 6), {doc['protocol']}", "",
          f"Assemblies fine-tuned per budget: {d['n_per_budget']} (evenly spread over each budget's ranking by "
          f"`{doc['chosen_proxy']}`, rank 0 and the last included), seeds {d['seeds']}; candidates per budget "
          f"{doc['candidates']}. τ/ρ are computed within each budget and averaged (weighted by n) against the "
          "seed-mean test accuracy; the bootstrap resamples assemblies within budgets."
          + "".join(f" Left out of {bb} (not reassemblies): "
                    + ", ".join(f"{i} = {_zoo_row(m)}" for i, m in sorted(g.items()))
                    + "." for bb, g in sorted(d.get("single_model", {}).items())), "",
          "| proxy | Kendall τ [95% CI] | Spearman ρ [95% CI] | τ per budget | τ per seed | s / candidate | verdict |",
          "|---|---|---|---|---|---|---|"]
    for name, e in d["proxies"].items():
        pm = e["pooled_mean_acc"]
        secs = [v.get(name) for v in doc["proxy_seconds_per_candidate"].values() if v.get(name) is not None]
        L.append(f"| {name}{' (chosen)' if name == doc['chosen_proxy'] else ''} | {_fmt(pm['tau'])} "
                 f"[{_fmt(pm['tau_lo'])}, {_fmt(pm['tau_hi'])}] | {_fmt(pm['rho'])} [{_fmt(pm['rho_lo'])}, "
                 f"{_fmt(pm['rho_hi'])}] | "
                 + ", ".join(f"{bb}: {_fmt(v['tau'], 2)}" for bb, v in e["per_budget"].items())
                 + " | " + ", ".join(f"{s}: {_fmt(v, 2)}" for s, v in e["per_seed"].items())
                 + f" | {_fmt(float(np.mean(secs)) if secs else float('nan'), 2)} | **{e['verdict']}** |")
    sel = d["selection"]
    if sel:
        halves = ", ".join(f"{bb} {len(h['selection'])}/{len(h['heldout'])}" for bb, h in sel["split"].items())
        L += ["", "Proxy selection, on validation accuracy only (the fine-tuning's own held-out training images; "
              "test accuracy is never used to choose): each budget's fine-tuned assemblies are split at random "
              f"(seeded) into a selection half and a held-out half (selection/held-out: {halves}). Best τ against "
              f"seed-mean validation accuracy on the selection half: **{sel['selected']}** "
              f"(τ {_fmt(sel['selection_tau'][sel['selected']])}); on the held-out assemblies the best is "
              f"**{sel['heldout_best']}** (τ {_fmt(sel['heldout_tau'].get(sel['heldout_best'], float('nan')))}; "
              f"{sel['selected']}: {_fmt(sel['heldout_tau'].get(sel['selected'], float('nan')))}). "
              + (f"It wins on the held-out assemblies: **make `{sel['recommended']}` the default** (`proxy.name`)."
                 if sel["wins_heldout"] else
                 f"It does not win on the held-out assemblies with a positive τ: keep **`{sel['recommended']}`** as "
                 "the default.")
              + f" For reference only, τ of {sel['selected']} against test accuracy on the held-out assemblies: "
              f"{_fmt(sel['heldout_test_tau'].get(sel['selected'], float('nan')))}."]
    else:
        L += ["", "Proxy selection needs at least 6 fine-tuned assemblies in a budget (3 to select on, 3 held out; "
              "`claims.assemblies_per_budget`) with validation accuracies."]
    L += ["", "Mean test accuracy of the best-scored assembly among those fine-tuned, per proxy (oracle = best "
          "fine-tuned): " + "; ".join(f"{n}: " + ", ".join(f"{bb} {v:.4f}" for bb, v in sorted(g.items()))
                                       for n, g in d["pick_by_proxy"].items())
          + "; oracle: " + ", ".join(f"{bb} {v:.4f}" for bb, v in sorted(d["oracle"].items())) + ".",
          "", f"Scatter plots: `{Path(fig_dir) / 'proxy_vs_accuracy.png'}`."]

    e = doc["e"]
    L += ["", f"## (e) Cover-set partition and proxy ranking vs random choices (Table 2), {doc['protocol']}", "",
          "`pick` = cover-set partition + program + proxy (rank 0), over the seeds of (c). Random arms: "
          f"{cl['random_draws']} draws each, each draw fine-tuned with its own seed (none of the pick's). Draws that "
          "land on the same network (same blocks) are one sample, the mean of their runs; an arm's sample size is its "
          "number of distinct networks, and a network that is the pick's own is flagged. Uniform random cut points: "
          "each model cut at K-1 points drawn uniformly among its gaps (same K, no size bound), each block in the set "
          "of its stage, then the same program and proxy as the pipeline: this tests the value of CKA-driven cut "
          "placement and set grouping against arbitrary cuts. A random feasible assembly is drawn uniformly from the "
          "budget's feasible set (no proxy; never one zoo model re-headed).", "",
          "| budget | arm | networks | acc | pick − arm [95% CI] | verdict |", "|---|---|---|---|---|---|"]
    for bname, r in e.items():
        pick = f"pick = {_zoo_row(r['single_model'])}" if r.get("single_model") else "pick (✓ partition, ✓ proxy)"
        L.append(f"| {bname} | {pick} | 1 | {_ms(r['pick'])} | | |")
        for arm, title in ARM_TITLES.items():
            if arm not in r:
                continue
            a = r[arm]
            L.append(f"| {bname} | {title} | {_networks(a)}: {'; '.join(a['blocks'])} | {_ms(a['acc'])} | "
                     f"{_ci(a['vs_pick'])} | **{a['verdict']}** |")
            L += [f"| {bname} | {title.split(' (')[0]}: draw = {_zoo_row(m)} | | {_ms(acc)} | | n/a |"
                  for m, acc in a["single_model"].items()]
    L += ["", "## Cost", "", "Proxy seconds per candidate (CPU, this run): "
          + "; ".join(f"{bb}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(s.items())) for bb, s in
                      doc["proxy_seconds_per_candidate"].items())
          + ". Fine-tuning time per job: `results/benchmarks/claims/`.", ""]
    return "\n".join(L)
