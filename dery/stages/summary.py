"""Ingest every stage's metrics into MLflow; read them back into the summary table."""
from __future__ import annotations

from pathlib import Path

from .. import evaluation as E
from .. import fingerprint as FP
from .. import tracking as T
from ..atomic import write_json
from ._io import _json


def write_fingerprint(files: dict[str, list[str]], out: str) -> None:
    write_json(out, FP.fingerprint(files))


def fingerprint_tags(fingerprint_json: str | None) -> dict[str, str]:
    """The fingerprint as MLflow tags of every run: the whole-run hash, each stage's, and the machine."""
    if not fingerprint_json:
        return {}
    fp = _json(fingerprint_json)
    env = fp["environment"]
    return {"dery.fingerprint": FP.short(fp), **{f"dery.fingerprint.{k}": v for k, v in fp["stages"].items()},
            "dery.cpu": str(env.get("cpu_model")), "dery.cpu_avx512": str(env.get("cpu_avx512f")),
            "dery.kernels": str(env.get("torch_cpu_capability")),
            "dery.repro_mode": str((env.get("requested") or {}).get("mode")),
            "dery.versions": f"torch {env.get('torch')}, numpy {env.get('numpy')}, timm {env.get('timm')}"}


def environment_tags(fingerprint_json: str | None) -> dict[str, str]:
    """Every entry of the fingerprint's environment (library versions, CPU, kernels, thread caps) as a
    ``dery.env.*`` tag: MLflow has no standard tag for them."""
    if not fingerprint_json:
        return {}
    return {f"dery.env.{k}": v for k, v in T._flatten(_json(fingerprint_json)["environment"]).items()}


def run_datasets(rec: dict, split: dict | None, test_images: int | None = None,
                 probe_images: int | None = None) -> list[T.Split]:
    """The datasets the job of a record used, from ``results/data/splits.json`` (indices into the
    Fashion-MNIST train set; the test set is its first ``finetune.test_images`` images)."""
    if not split:
        return []
    src = split.get("data_dir") or "."
    stage = rec["tags"].get("stage")

    def part(name: str, context: str, indices=None) -> list[T.Split]:
        idx = split.get(name) if indices is None else indices
        return [T.Split(name, list(idx), src, context)] if idx is not None else []

    if stage == "finetune":
        test = part("target_test", "testing", range(test_images)) if test_images else []
        return part("target_train", "training") + part("target_val", "validation") + test
    if stage == "pretrain" and rec["tags"].get("source"):
        source = rec["tags"]["source"]
        return part(f"source_{source}_train", "training") + part(f"source_{source}_val", "validation")
    if stage == "partition" and probe_images:  # the CKA features behind the equivalence sets
        return part("probe", "probe", split.get("target_train", [])[:probe_images])
    if stage == "proxy":  # the proxies score assemblies on a seeded subset of the target train split
        return part("target_train", "proxy")
    return []


def track(metric_files: list[str], tracking_uri: str, experiment: str, params_hash: str, out: str,
          attempts: int = 6, retry_wait_s: float = 2.0, fingerprint_json: str | None = None,
          benchmarks: list[str] | None = None, splits_json: str | None = None, test_images: int | None = None,
          probe_images: int | None = None) -> None:
    """Log every record as a run with the times, rule, benchmark figures and datasets of its job."""
    split = _json(splits_json) if splits_json else None
    benchmarks = None if benchmarks is None else {Path(b).as_posix() for b in benchmarks}
    recs, jobs = [], {}
    for f in metric_files:
        rec = _json(f)
        if rec.get("skip"):
            continue
        recs.append(rec)
        jobs[rec["key"]] = job = T.job_of(f, benchmarks)
        job.datasets = run_datasets(rec, split, test_images, probe_images)
    tags = {"dery.params_hash": params_hash, "dery.git_commit": T.git_commit(),
            T.GIT_COMMIT: T.git_commit(short=False), **fingerprint_tags(fingerprint_json),
            **environment_tags(fingerprint_json)}
    stats = T.ingest(recs, tracking_uri, experiment, tags, attempts=attempts, wait_s=retry_wait_s, jobs=jobs)
    write_json(out, {**stats, "records": len(recs), "tracking_uri": tracking_uri, "experiment": experiment})


def summarise(tracking_uri: str, experiment: str, out_md: str, out_csv: str, out_json: str) -> None:
    """The tables of ``dery results``, read back from MLflow: Markdown, CSV and the metrics DVC compares."""
    df = T.runs(tracking_uri, experiment)
    E.summary_table(df).to_csv(out_csv, index=False)
    Path(out_md).write_text(E.results_markdown(df, experiment, tracking_uri))  # the fingerprint comes from MLflow
    write_json(out_json, E.metrics_summary(df))
