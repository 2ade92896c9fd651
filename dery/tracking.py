"""MLflow: stages write ``*.metrics.json`` files; one serial step ingests them.

Parallel Snakemake jobs therefore never write to the SQLite store at once (MLflow's SQLite
backend raises "database is locked" and races its schema migration under concurrent first
use). Each record becomes one run named by its key (``finetune/small/rank0/FZ`` is the run
``finetune-small-rank0-FZ``) and tagged with the content hash of the record; ingesting a
record whose latest run already holds the same content is a no-op, and readers keep the
latest run per key, so re-running a stage never duplicates a row of the tables.

What MLflow shows of a run comes from the job that wrote the record, not from the ingest: the run
starts and ends when the job did (the record file's mtime is its end, Snakemake's benchmark TSV of
the job gives its duration), its metrics carry that time (per-epoch series keep their step, spread
over the job), its benchmark figures are ``job.*`` metrics, and MLflow's own tags name its source
(``mlflow.source.name``: the rule, ``mlflow.source.git.commit``). None of this enters the content
hash, so re-ingesting unchanged records adds no run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_DB = "results/mlflow.db"
URI_ENV = "DERY_TRACKING_URI"
# How a record is logged (times, tags, datasets). A run logged by an older format is logged once more, so
# that a store filled before the change shows the same as a new one; readers keep the latest run per key.
LOG_FORMAT = "2"
# MLflow's standard tags (mlflow.utils.mlflow_tags), shown by its UI
SOURCE_NAME, SOURCE_TYPE, GIT_COMMIT = "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit"
DATA_CONTEXT = "mlflow.data.context"


def record(key: str, tags: dict[str, Any], params: dict[str, Any], metrics: dict[str, float],
           steps: dict[str, list[float]] | None = None) -> dict[str, Any]:
    return {"key": key, "tags": {k: str(v) for k, v in tags.items()}, "params": params,
            "metrics": {k: float(v) for k, v in metrics.items()}, "steps": steps or {}}


def content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit(root: str | os.PathLike = ".", short: bool = True) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", *(["--short"] if short else []), "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
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


def lost_store(tracking_uri: str, experiment: str, ingested: str | os.PathLike) -> str | None:
    """Why the SQLite store of a finished ingest no longer holds its runs (deleted, emptied, another file),
    or None. Snakemake cannot see this (the store is not a rule's output), so the workflow asks at start-up
    and has the ingest run again: every result is still on disk as ``*.metrics.json``."""
    import sqlite3

    db = sqlite_path(tracking_uri)
    ingested = Path(ingested)
    if db is None or not ingested.is_file():
        return None  # a server keeps its own store; nothing ingested yet
    if not db.is_file() or db.stat().st_size == 0:
        return f"the MLflow store {db} is {'empty' if db.is_file() else 'missing'}"
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            n = con.execute("SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                            "WHERE e.name = ? AND r.lifecycle_stage = 'active'", (experiment,)).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as exc:
        return f"the MLflow store {db} cannot be read as one ({exc})"
    logged = json.loads(ingested.read_text()).get("records", 0)
    return f"the MLflow store {db} holds no run of experiment `{experiment}`" if logged and not n else None


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


# ------------------------------------------------------------------ the job behind each record
# The rule that writes each record file, and that rule's `benchmark:` file, as in workflow/rules/*.smk
# (tests/test_tracking.py checks this table against those files). Wildcards map one to one.
JOBS = (
    (r"results/zoo/(?P<w>[^/]+)\.metrics\.json", "zoo.smk", "pretrain_zoo", "results/benchmarks/pretrain_zoo/{w}.tsv"),
    (r"results/partition/equivalence_sets\.metrics\.json", "partition.smk", "partition",
     "results/benchmarks/partition.tsv"),
    (r"results/reassembly/(?P<w>[^/]+)/candidates\.metrics\.json", "reassembly.smk", "reassembly_ilp",
     "results/benchmarks/reassembly_ilp/{w}.tsv"),
    (r"results/proxy/(?P<w>[^/]+)/ranking\.metrics\.json", "reassembly.smk", "proxy_rank",
     "results/benchmarks/proxy_rank/{w}.tsv"),
    (r"results/finetune/(?P<w>zoo/[^/]+_FT)\.metrics\.json", "finetune.smk", "finetune_zoo",
     "results/benchmarks/finetune/{w}.tsv"),
    (r"results/finetune/(?P<w>[^/]+/scratch_FT)\.metrics\.json", "finetune.smk", "finetune_scratch",
     "results/benchmarks/finetune/{w}.tsv"),
    (r"results/finetune/(?P<w>[^/]+/rank[0-9]+_[^/]+)\.metrics\.json", "finetune.smk", "finetune_assembly",
     "results/benchmarks/finetune/{w}.tsv"),
    # the claims and bench targets log their own fine-tuning runs (dery.stages.claims_summary, dery.stages.bench)
    (r"results/claims/finetune/(?P<w>zoo/[^/]+_seed[0-9]+)\.metrics\.json", "claims.smk", "claims_zoo",
     "results/benchmarks/claims/finetune/{w}.tsv"),
    (r"results/claims/finetune/(?P<w>scratch/[^/]+/seed[0-9]+)\.metrics\.json", "claims.smk", "claims_scratch",
     "results/benchmarks/claims/finetune/{w}.tsv"),
    (r"results/claims/finetune/(?P<w>[^/]+/[^/]+/slot[0-9]+_[^/]+_seed[0-9]+)\.metrics\.json", "claims.smk",
     "claims_finetune", "results/benchmarks/claims/finetune/{w}.tsv"),
    (r"results/claims\.metrics\.json", "claims.smk", "claims", "results/benchmarks/claims/summary.tsv"),
    (r"results/bench\.metrics\.json", "bench.smk", "bench", "results/benchmarks/bench/summary.tsv"),
    (r"results/bench/finetune/(?P<w>zoo/[^/]+_seed[0-9]+)\.metrics\.json", "bench.smk", "bench_zoo",
     "results/benchmarks/bench/finetune/{w}.tsv"),
    (r"results/bench/finetune/(?P<w>[^/]+/scratch_slot[0-9]+_seed[0-9]+)\.metrics\.json", "bench.smk",
     "bench_scratch", "results/benchmarks/bench/finetune/{w}.tsv"),
    (r"results/bench/finetune/(?P<w>[^/]+/slot[0-9]+_[^/]+)\.metrics\.json", "bench.smk", "bench_finetune",
     "results/benchmarks/bench/finetune/{w}.tsv"),
)
# Snakemake's benchmark columns (snakemake.benchmark.BenchmarkRecord; sizes in MB) -> metric, how repeats combine
BENCHMARK_METRICS = {"s": ("job.seconds", sum), "cpu_time": ("job.cpu_seconds", sum),
                     "max_rss": ("job.max_rss_mb", max), "max_vms": ("job.max_vms_mb", max),
                     "max_uss": ("job.max_uss_mb", max), "max_pss": ("job.max_pss_mb", max),
                     "io_in": ("job.io_in_mb", sum), "io_out": ("job.io_out_mb", sum),
                     "mean_load": ("job.mean_load", lambda v: sum(v) / len(v))}


@dataclass
class Split:
    """A dataset a run used, as MLflow logs it: the row indices into ``source`` (a folder or file)."""
    name: str
    indices: list[int]
    source: str
    context: str  # mlflow.data.context: training, validation, testing, ...

    @property
    def digest(self) -> str:
        """Which rows, in which order (not where the data folder lies, which differs between clones)."""
        return hashlib.sha256(json.dumps([int(i) for i in self.indices]).encode()).hexdigest()[:16]


@dataclass
class Job:
    """What MLflow shows of the job that wrote a record; none of it is part of the record's content hash."""
    rule: str | None = None
    source: str | None = None  # mlflow.source.name
    start_ms: int | None = None
    end_ms: int | None = None
    figures: dict[str, float] = field(default_factory=dict)  # job.seconds, job.max_rss_mb, ...
    datasets: list[Split] = field(default_factory=list)


def job_rule(metrics_file: str | os.PathLike) -> tuple[str, str, str] | None:
    """(rules file, rule, benchmark file) of the job that writes ``metrics_file``, or None.

    The benchmark path keeps the metrics file's own prefix (``/x/results/zoo/a.metrics.json`` ->
    ``/x/results/benchmarks/pretrain_zoo/a.tsv``)."""
    path = Path(metrics_file).as_posix()
    for pattern, smk, rule, bench in JOBS:
        m = re.search(rf"(?:^|/)({pattern})$", path)
        if m:
            return smk, rule, path[: m.start(1)] + bench.format(**m.groupdict())
    return None


def benchmark_files(metric_files: list[str]) -> list[str]:
    """The benchmark TSVs of the jobs that write ``metric_files`` (an input of the ingest)."""
    return [j[2] for j in map(job_rule, metric_files) if j is not None]


def read_benchmark(tsv: str | os.PathLike) -> dict[str, float]:
    """A Snakemake benchmark TSV as ``job.*`` metrics; columns that say NA (too short to sample) are left out."""
    lines = [ln.split("\t") for ln in Path(tsv).read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return {}
    head, rows = lines[0], lines[1:]
    out = {}
    for col, (name, combine) in BENCHMARK_METRICS.items():
        if col not in head:
            continue
        vals = []
        for row in rows:
            try:
                vals.append(float(row[head.index(col)]))
            except (ValueError, IndexError):
                pass
        if vals:
            out[name] = float(combine(vals))
    return out


def job_of(metrics_file: str | os.PathLike, benchmarks: set[str] | None = None) -> Job:
    """The job behind a record file: it ended when the file was written (its mtime) and ran for the
    ``s`` seconds of its benchmark TSV. ``benchmarks``: the TSVs to read, as paths named the way the
    metrics files are (the rule's inputs); default: any that exists."""
    metrics_file = Path(metrics_file)
    job = Job()
    if metrics_file.is_file():
        job.end_ms = job.start_ms = int(metrics_file.stat().st_mtime * 1000)
    found = job_rule(metrics_file)
    if found is None:
        return job
    smk, job.rule, tsv = found
    job.source = f"workflow/rules/{smk}:{job.rule}"
    if (benchmarks is None or tsv in benchmarks) and Path(tsv).is_file():
        job.figures = read_benchmark(tsv)
        if job.end_ms is not None and "job.seconds" in job.figures:
            job.start_ms = job.end_ms - round(job.figures["job.seconds"] * 1000)
    return job


def _step_times(start_ms: int, end_ms: int, n: int) -> list[int]:
    """Epoch i of n ends at (i + 1) / n of the job: the records hold no time per epoch."""
    return [start_ms + (end_ms - start_ms) * (i + 1) // n for i in range(n)]


def _dataset_input(split: Split):
    import warnings

    import numpy as np
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import DatasetInput, InputTag

    src = Path(split.source)
    with warnings.catch_warnings():  # "" and file: are both LocalArtifactDatasetSource; either is right
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(src.as_uri() if src.is_absolute() else split.source)
    ds = from_numpy(np.asarray(split.indices, dtype=np.int64), source=source, name=split.name, digest=split.digest)
    return DatasetInput(dataset=ds._to_mlflow_entity(), tags=[InputTag(key=DATA_CONTEXT, value=split.context)])


def _experiment_id(client, experiment: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    db = sqlite_path(tracking_uri)
    # MLflow's default artifact root is ./mlruns in the current directory; keep a local store's
    # artifacts beside its database under results/ instead. A server chooses its own root.
    artifacts = (db.resolve().parent / "mlflow-artifacts").as_uri() if db is not None else None
    return client.create_experiment(experiment, artifact_location=artifacts)


def _ingested_ms(tags: dict[str, str], start_ms: int | None) -> int:
    """When a run was logged: its ``dery.ingested`` tag; runs logged before that tag started at their ingest."""
    try:
        return int(tags["dery.ingested"])
    except (KeyError, ValueError):
        return int(start_ms or 0)


def _latest_hash_per_key(client, exp_id: str) -> dict[str, tuple[str, str]]:
    """(content hash, log format) of the latest logged finished run of each key."""
    latest: dict[str, tuple[int, str, str]] = {}
    for run in client.search_runs([exp_id], max_results=50000):
        if run.info.status != "FINISHED":  # a run cut off mid-logging (store went away) does not count
            continue
        tags = run.data.tags
        key = tags.get("dery.key")
        when = _ingested_ms(tags, run.info.start_time)
        if key is not None and (key not in latest or when > latest[key][0]):
            latest[key] = (when, tags.get("dery.hash", ""), tags.get("dery.log_format", "1"))
    return {k: v[1:] for k, v in latest.items()}


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
           common_tags: dict[str, str] | None = None, attempts: int = 6, wait_s: float = 2.0,
           jobs: dict[str, Job] | None = None, artifacts: dict[str, list[str]] | None = None) -> dict[str, int]:
    """Log each record as one run unless the latest finished run with its key holds the same content.

    Comparing with the *latest* run (not any earlier one) matters when a result goes A -> B -> A:
    the third ingest must log A again, or the tables would keep showing B. "Latest" is the order of
    logging (tag ``dery.ingested``), not the runs' start times, which are those of their jobs.

    ``jobs`` (by record key): the job behind each record, whose times, rule, benchmark figures and
    datasets the run shows; a record without one is timed at the ingest. ``artifacts`` (by record key): files
    logged with the run (a record that carries them should carry their hashes too, so a changed file is a changed
    record and is logged again).

    A locked SQLite store or an unreachable server is retried (``attempts`` times, waits doubling from
    ``wait_s``); ingesting is idempotent, so a retry after a half-logged run only completes it (runs that
    did not finish are ignored). If the store stays unavailable, StoreUnavailable says so and that every
    result is still on disk: the stages' ``*.metrics.json`` files are the source of truth, not MLflow.
    """
    import time

    for attempt in range(attempts):
        try:
            check_reachable(tracking_uri)
            return _ingest_once(records, tracking_uri, experiment, common_tags, jobs or {}, artifacts or {})
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
                 common_tags: dict[str, str] | None, jobs: dict[str, Job],
                 artifacts: dict[str, list[str]]) -> dict[str, int]:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp_id = _experiment_id(client, experiment, tracking_uri)
    latest = _latest_hash_per_key(client, exp_id)
    added = skipped = 0
    for rec in records:
        h = content_hash(rec)  # the record alone: job times, tags and datasets below are not part of it
        if latest.get(rec["key"]) == (h, LOG_FORMAT):
            skipped += 1
            continue
        job = jobs.get(rec["key"]) or Job()
        now = int(time.time() * 1000)
        end = job.end_ms if job.end_ms is not None else now
        start = min(job.start_ms if job.start_ms is not None else end, end)
        tags = {**(common_tags or {}), **rec["tags"], "dery.key": rec["key"], "dery.hash": h,
                "dery.log_format": LOG_FORMAT, "dery.ingested": str(now)}
        if job.source:
            tags.update({SOURCE_NAME: job.source, SOURCE_TYPE: "JOB"})
        rid = client.create_run(exp_id, start_time=start, tags=tags, run_name=run_name(rec["key"])).info.run_id
        metrics = [Metric(k, v, end, 0) for k, v in rec["metrics"].items()]
        metrics += [Metric(k, float(v), end, 0) for k, v in job.figures.items()]
        for k, series in rec["steps"].items():
            metrics += [Metric(k, float(v), t, i)
                        for i, (v, t) in enumerate(zip(series, _step_times(start, end, len(series)), strict=True))]
        params = [Param(k, v) for k, v in _flatten(rec["params"]).items()]
        # MlflowClient.log_batch splits what it is given into requests within the server's limits
        client.log_batch(rid, metrics=metrics, params=params, synchronous=True)
        if job.datasets:
            client.log_inputs(rid, datasets=[_dataset_input(d) for d in job.datasets])
        for path in artifacts.get(rec["key"], []):
            client.log_artifact(rid, path)
        client.set_terminated(rid, end_time=end)
        latest[rec["key"]] = (h, LOG_FORMAT)
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
    # newest logged first (runs start when their jobs did; an older format's runs started at their ingest)
    started = (df["start_time"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    logged = pd.to_numeric(df.get("tags.dery.ingested", pd.Series(index=df.index, dtype=object)), errors="coerce")
    order = logged.fillna(started).sort_values(ascending=False, kind="stable").index
    return df.loc[order].drop_duplicates("tags.dery.key", keep="first").reset_index(drop=True)


def sqlite_uri(path: str | os.PathLike) -> str:
    return "sqlite:///" + str(Path(path).resolve())
