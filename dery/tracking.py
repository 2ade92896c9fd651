"""MLflow: stages write ``*.metrics.json`` files; one serial step ingests them.

Parallel Snakemake jobs therefore never write to the SQLite store at once (MLflow's SQLite
backend raises "database is locked" and races its schema migration under concurrent first
use). Each record becomes one run named by its key (e.g. ``finetune/small/cand0/FZ``) and
tagged with the content hash of the record; ingesting the same record twice is a no-op, and
readers keep the latest run per key.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd


def record(key: str, tags: dict[str, Any], params: dict[str, Any], metrics: dict[str, float],
           steps: dict[str, list[float]] | None = None) -> dict[str, Any]:
    return {"key": key, "tags": {k: str(v) for k, v in tags.items()}, "params": params,
            "metrics": {k: float(v) for k, v in metrics.items()}, "steps": steps or {}}


def content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit(root: str | os.PathLike = ".") -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]
    return out


def ingest(records: list[dict[str, Any]], tracking_uri: str, experiment: str,
           common_tags: dict[str, str] | None = None) -> dict[str, int]:
    """Log each record as one run unless a run with the same key and content hash exists."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    existing = {(r.data.tags.get("dery.key"), r.data.tags.get("dery.hash"))
                for r in client.search_runs([exp_id], max_results=50000)}
    added = skipped = 0
    for rec in records:
        h = content_hash(rec)
        if (rec["key"], h) in existing:
            skipped += 1
            continue
        tags = {**(common_tags or {}), **rec["tags"], "dery.key": rec["key"], "dery.hash": h}
        run = client.create_run(exp_id, run_name=rec["key"].replace("/", "-"), tags=tags)
        rid = run.info.run_id
        from mlflow.entities import Metric, Param

        metrics = [Metric(k, v, 0, 0) for k, v in rec["metrics"].items()]
        for k, series in rec["steps"].items():
            metrics += [Metric(k, float(v), 0, i) for i, v in enumerate(series)]
        params = [Param(k, v) for k, v in _flatten(rec["params"]).items()]
        client.log_batch(rid, metrics=metrics, params=params)
        client.set_terminated(rid)
        added += 1
    return {"added": added, "skipped": skipped}


def runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """All runs of the experiment, latest per ``dery.key`` (re-runs never duplicate rows)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(experiment_names=[experiment], max_results=50000, order_by=["attributes.start_time DESC"])
    if df.empty:
        return df
    return df.drop_duplicates("tags.dery.key", keep="first").reset_index(drop=True)


def sqlite_uri(path: str | os.PathLike) -> str:
    return "sqlite:///" + str(Path(path).resolve())
