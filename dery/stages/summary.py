"""Ingest every stage's metrics into MLflow; read them back into the summary table."""
from __future__ import annotations

from pathlib import Path

from .. import evaluation as E
from .. import tracking as T
from .. import zoo as Z
from ._io import _json


def track(metric_files: list[str], tracking_uri: str, experiment: str, params_hash: str, out: str) -> None:
    recs = [r for r in (_json(f) for f in metric_files) if not r.get("skip")]
    stats = T.ingest(recs, tracking_uri, experiment, {"dery.params_hash": params_hash, "dery.git_commit": T.git_commit()})
    Z.write_json(out, {**stats, "records": len(recs), "tracking_uri": tracking_uri, "experiment": experiment})


def summarise(ingested: str, partition_json: str, out_md: str, out_csv: str, out_json: str) -> None:
    info = _json(ingested)
    df = T.runs(info["tracking_uri"], info["experiment"])
    table = E.summary_table(df)
    corr = E.proxy_correlation(table)
    part = _json(partition_json)
    table.to_csv(out_csv, index=False)
    sets = "\n".join(f"- set {j}: " + "; ".join(f"{b['model']} [{b['nodes'][0]} .. {b['nodes'][1]}]"
                                                for b in part["blocks"] if b["set"] == j)
                     for j in range(len(part["sets"])))
    md = [f"# dery summary: experiment `{info['experiment']}`", "",
          "Read back from MLflow (" + info["tracking_uri"] + "). Accuracies are top-1 on the Fashion-MNIST test set "
          "(touched once per model); params include stem, adapters and head; MACs count one multiply-accumulate as 1 "
          "(torch.utils.flop_counter FLOPs / 2) at 32x32 input. FZ = pretrained blocks frozen, FT = all weights trained;"
          " `scratch` = the best assembly's architecture from random initialisation; `zoo` = each zoo model fine-tuned "
          "from its pretraining.", "", E.to_markdown(table), "",
          "## Proxy rank correlation (Kendall tau, proxy score vs test accuracy, assemblies)", "",
          "\n".join(f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in corr.items()), "",
          f"## Equivalence sets (stage alignment {part['stage_alignment']:.2f})", "", sets, ""]
    Path(out_md).write_text("\n".join(md))
    Z.write_json(out_json, {"proxy": corr, "stage_alignment": part["stage_alignment"],
                            "best": {str(b): float(g[["FZ_test_acc", "FT_test_acc"]].max(axis=None))
                                     for b, g in table[table["kind"] == "assembly"].groupby("budget")}
                            if "FZ_test_acc" in table and "FT_test_acc" in table else {}})
