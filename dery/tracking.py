"""MLflow: stages write ``*.metrics.json`` files; one serial step ingests them.

Parallel Snakemake jobs therefore never write to the SQLite store at once (MLflow's SQLite
backend raises "database is locked" and races its schema migration under concurrent first
use). Each record becomes one run named by its key (``finetune/small/rank0/FZ`` is the run
``finetune-small-rank0-FZ``) and tagged with the content hash of the record; ingesting a
record whose latest run already holds the same content is a no-op, and readers keep the
latest run per key, so re-running a stage never duplicates a row of the tables.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_DB = "results/mlflow.db"
URI_ENV = "DERY_TRACKING_URI"
# MLflow's per-request limits (mlflow.utils.validation): a larger log_batch is refused by a server
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000


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


def resolve_uri(configured: str | None = None) -> str:
    """The store to use: ``$DERY_TRACKING_URI``, else the params file's ``tracking.uri``, else SQLite.

    The SQLite default is relative (``sqlite:///results/mlflow.db``, resolved against the working
    directory) so that the same params give the same URI in every clone of the project.
    """
    return os.environ.get(URI_ENV) or configured or "sqlite:///" + DEFAULT_DB


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute), None for other stores."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def run_name(key: str) -> str:
    return key.replace("/", "-")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]
    return out


def _chunks(items: list, size: int) -> list[list]:
    return [items[i: i + size] for i in range(0, len(items), size)] or [[]]


def _experiment_id(client, experiment: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    db = sqlite_path(tracking_uri)
    # MLflow's default artifact root is ./mlruns in the current directory; keep a local store's
    # artifacts beside its database under results/ instead. A server chooses its own root.
    artifacts = (db.resolve().parent / "mlflow-artifacts").as_uri() if db is not None else None
    return client.create_experiment(experiment, artifact_location=artifacts)


def _latest_hash_per_key(client, exp_id: str) -> dict[str, str]:
    latest: dict[str, str] = {}
    for run in client.search_runs([exp_id], max_results=50000, order_by=["attributes.start_time DESC"]):
        if run.info.status != "FINISHED":  # a run cut off mid-logging (store went away) does not count
            continue
        key = run.data.tags.get("dery.key")
        if key is not None and key not in latest:
            latest[key] = run.data.tags.get("dery.hash", "")
    return latest


def _transient(exc: BaseException) -> bool:
    """A store that is busy (SQLite locked by another writer) or a server that is (re)starting."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(s in text for s in ("database is locked", "database table is locked", "connection refused",
                                   "max retries exceeded", "temporarily unavailable", "timed out", "503", "502"))


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with the fix, when an HTTP tracking server does not answer its /health endpoint.

    MLflow's own client retries an unreachable server for minutes before it gives up.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            if r.status == 200:
                return
            problem = f"answered HTTP {r.status}"
    except OSError as exc:
        problem = f"did not answer ({exc})"
    raise StoreUnavailable(f"the MLflow server at {tracking_uri} {problem}: start it (`mlflow server --host "
                           "127.0.0.1 --port PORT --backend-store-uri sqlite:///mlflow.db`) or point dery at the right "
                           f"store (${URI_ENV}, `tracking.uri` in the params file, or `dery results --tracking-uri`).")


def ingest(records: list[dict[str, Any]], tracking_uri: str, experiment: str,
           common_tags: dict[str, str] | None = None, attempts: int = 6, wait_s: float = 2.0) -> dict[str, int]:
    """Log each record as one run unless the latest finished run with its key holds the same content.

    Comparing with the *latest* run (not any earlier one) matters when a result goes A -> B -> A:
    the third ingest must log A again, or the tables would keep showing B.

    A locked SQLite store or an unreachable server is retried (``attempts`` times, waits doubling from
    ``wait_s``); ingesting is idempotent, so a retry after a half-logged run only completes it (runs that
    did not finish are ignored). If the store stays unavailable, StoreUnavailable says so and that every
    result is still on disk: the stages' ``*.metrics.json`` files are the source of truth, not MLflow.
    """
    import time

    for attempt in range(attempts):
        try:
            check_reachable(tracking_uri)
            return _ingest_once(records, tracking_uri, experiment, common_tags)
        except Exception as exc:  # noqa: BLE001 - MLflow wraps store errors in several exception types
            if not (isinstance(exc, StoreUnavailable) or _transient(exc)):
                raise
            last = exc
            if attempt + 1 < attempts:
                time.sleep(wait_s * 2 ** attempt)
    raise StoreUnavailable(
        f"could not log {len(records)} result records to MLflow at {tracking_uri} after {attempts} attempts "
        f"({type(last).__name__}: {str(last)[:300]}). Nothing is lost: every stage's results stay on disk as "
        "results/**/*.metrics.json. Start or unlock the store (stop the other process holding the SQLite file, "
        f"or start the server / fix ${URI_ENV} or tracking.uri), then re-run `snakemake --cores all`: only the "
        "ingest and the tables after it run again.") from last


def _ingest_once(records: list[dict[str, Any]], tracking_uri: str, experiment: str,
                 common_tags: dict[str, str] | None) -> dict[str, int]:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp_id = _experiment_id(client, experiment, tracking_uri)
    latest = _latest_hash_per_key(client, exp_id)
    added = skipped = 0
    for rec in records:
        h = content_hash(rec)
        if latest.get(rec["key"]) == h:
            skipped += 1
            continue
        tags = {**(common_tags or {}), **rec["tags"], "dery.key": rec["key"], "dery.hash": h}
        rid = client.create_run(exp_id, run_name=run_name(rec["key"]), tags=tags).info.run_id
        metrics = [Metric(k, v, 0, 0) for k, v in rec["metrics"].items()]
        for k, series in rec["steps"].items():
            metrics += [Metric(k, float(v), 0, i) for i, v in enumerate(series)]
        params = [Param(k, v) for k, v in _flatten(rec["params"]).items()]
        for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
            client.log_batch(rid, params=chunk)
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            client.log_batch(rid, metrics=chunk)
        client.set_terminated(rid)
        latest[rec["key"]] = h
        added += 1
    return {"added": added, "skipped": skipped}


class TrackingError(RuntimeError):
    """The MLflow store or experiment is missing; the message says where dery looked and what to do."""


class StoreUnavailable(TrackingError):
    """The store is locked or the server does not answer; results stay on disk for a later ingest."""


def runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """All runs of the experiment, latest per ``dery.key`` (re-runs never duplicate rows)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        raise TrackingError(f"no MLflow store at {db} (tracking URI {tracking_uri}); run the workflow, "
                            "restore results with `dvc pull`, or point at the right store with --tracking-uri "
                            f"or ${URI_ENV}.")
    check_reachable(tracking_uri)
    if MlflowClient(tracking_uri).get_experiment_by_name(experiment) is None:
        names = [e.name for e in MlflowClient(tracking_uri).search_experiments()]
        raise TrackingError(f"experiment {experiment!r} not found in {tracking_uri} (it has {names}); the experiment "
                            "is the `name:` of the params file: pass --params or --experiment.")
    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(experiment_names=[experiment], max_results=50000, order_by=["attributes.start_time DESC"])
    if not df.empty:
        df = df[df["status"] == "FINISHED"]  # runs cut off mid-logging are not results
    if df.empty:
        return df
    return df.drop_duplicates("tags.dery.key", keep="first").reset_index(drop=True)


def sqlite_uri(path: str | os.PathLike) -> str:
    return "sqlite:///" + str(Path(path).resolve())
