"""Ingest every stage's metrics into MLflow; read them back into the summary table."""
from __future__ import annotations

from pathlib import Path

from .. import evaluation as E
from .. import fingerprint as FP
from .. import tracking as T
from .. import zoo as Z
from ._io import _json


def write_fingerprint(files: dict[str, list[str]], out: str) -> None:
    Z.write_json(out, FP.fingerprint(files))


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


def track(metric_files: list[str], tracking_uri: str, experiment: str, params_hash: str, out: str,
          attempts: int = 6, retry_wait_s: float = 2.0, fingerprint_json: str | None = None) -> None:
    recs = [r for r in (_json(f) for f in metric_files) if not r.get("skip")]
    stats = T.ingest(recs, tracking_uri, experiment, {"dery.params_hash": params_hash, "dery.git_commit": T.git_commit(),
                                                      **fingerprint_tags(fingerprint_json)},
                     attempts=attempts, wait_s=retry_wait_s)
    Z.write_json(out, {**stats, "records": len(recs), "tracking_uri": tracking_uri, "experiment": experiment})


def summarise(tracking_uri: str, experiment: str, out_md: str, out_csv: str, out_json: str) -> None:
    """The tables of ``dery results``, read back from MLflow: Markdown, CSV and the metrics DVC compares."""
    df = T.runs(tracking_uri, experiment)
    E.summary_table(df).to_csv(out_csv, index=False)
    Path(out_md).write_text(E.results_markdown(df, experiment, tracking_uri))  # the fingerprint comes from MLflow
    Z.write_json(out_json, E.metrics_summary(df))
