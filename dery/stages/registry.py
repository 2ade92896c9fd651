"""Log every fine-tuned assembly to MLflow as a PyTorch model and register it, in one serial job.

Names: one registered model per params file and budget, ``dery-{experiment}-{budget}``; one
version per distinct artifact (its weights sha256), so re-running registers nothing new.
Aliases: ``rank{r}-{protocol}`` (e.g. ``rank0-FZ``) names each candidate's current version,
``best`` the one with the highest validation accuracy (ties: better proxy rank, then FT
before FZ), as ``dery.artifacts.best_spec`` picks on disk. Load with
``mlflow.pytorch.load_model("models:/dery-{experiment}-{budget}@best")``.

Runs go to the experiment ``{experiment}-models``: for a local store its artifacts live beside
the database (``results/mlflow-artifacts``), where the metrics experiment, created without an
artifact location, would put them in ``./mlruns`` of whatever directory ran it. Each run
carries the assembly's numbers and links back to the metrics run of its fine-tuning job.
The model is pickled (``serialization_format="pickle"``): MLflow's default, ``torch.export``,
cannot follow ``features.OwnStem`` (see ``dery.artifacts``). ``code_paths`` ships the dery
package with the model, so ``mlflow models serve`` works where dery is not installed.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import artifacts as A
from ..atomic import write_json

log = logging.getLogger("dery")
REFERENCE_ATOL = 1e-5  # the reloaded artifact must reproduce its recorded logits this closely before it is registered


def registry_name(experiment: str, budget: str) -> str:
    return f"dery-{experiment}-{budget}"


def candidate_alias(rank: int, protocol: str) -> str:
    return f"rank{rank}-{protocol}"


def _artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store: a folder beside the database; a server decides for itself (None)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "mlflow-artifacts").resolve().as_uri()
    return None


def _models_experiment(client, experiment: str, tracking_uri: str) -> str:
    name = f"{experiment}-models"
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name, artifact_location=_artifact_root(tracking_uri))


def _requirements() -> list[str]:
    """Pinned from this environment (local version tags such as +cpu are not on PyPI), so MLflow need not infer them."""
    import safetensors
    import timm

    return [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}",
            f"safetensors=={safetensors.__version__}", f"numpy=={np.__version__}"]


def _existing_version(client, name: str, sha: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for v in versions:
        if v.tags.get("dery.artifact_sha256") == sha:
            return v
    return None


def _metrics_run_id(client, experiment: str, key: str) -> str | None:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`dery.key` = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _blocks_text(spec: dict[str, Any]) -> str:
    return " > ".join(f"{b['model']}[{b['start']}-{b['end']}]" for b in spec["blocks"])


def register_one(client, spec_path: str | Path, tracking_uri: str, experiment: str) -> dict[str, Any]:
    """Log one artifact as an MLflow model and register it (or find the version that already holds it)."""
    import mlflow
    from mlflow.models import infer_signature

    model = A.load_assembly(spec_path)
    spec = model.dery_spec
    diff = A.reference_check(model)
    if diff > REFERENCE_ATOL:
        raise A.ArtifactError(f"{spec_path} reloads with logits {diff:.2e} away from those it recorded (> "
                              f"{REFERENCE_ATOL}); this environment differs from the one that trained it "
                              f"({spec['software']}). Re-run the finetune job here or install those versions.")
    name = registry_name(experiment, spec["budget"])
    sha = spec["weights"]["sha256"]
    entry = {"spec": str(spec_path), "budget": spec["budget"], "rank": spec["rank"], "protocol": spec["protocol"],
             "candidate": spec["id"], "val_acc": spec["val_acc"], "test_acc": spec["test_acc"], "name": name,
             "weights_sha256": sha, "reference_max_abs_diff": diff}
    existing = _existing_version(client, name, sha)
    if existing is not None:
        log.info("%s is already version %s of %s", spec_path, existing.version, name)
        return {**entry, "version": int(existing.version), "run_id": existing.run_id, "new": False}
    x = A.preprocess(A.reference_images(spec), spec)[:2]
    with torch.no_grad():
        y = model(x)
    files = A.paths(spec_path)
    extra = [str(p) for p in (files.spec, files.weights, files.card, files.onnx, files.torchscript) if p.is_file()]
    key = f"finetune/{spec['budget']}/rank{spec['rank']}/{spec['protocol']}"
    tags = {"dery.key": f"model/{spec['budget']}/rank{spec['rank']}/{spec['protocol']}", "dery.artifact_sha256": sha,
            "budget": spec["budget"], "protocol": spec["protocol"], "candidate": spec["id"],
            "blocks": _blocks_text(spec)}
    metrics_run = _metrics_run_id(client, experiment, key)
    if metrics_run:
        tags["dery.metrics_run_id"] = metrics_run
    exp_id = _models_experiment(client, experiment, tracking_uri)
    with mlflow.start_run(experiment_id=exp_id,
                          run_name=f"{spec['budget']}-{candidate_alias(spec['rank'], spec['protocol'])}",
                          tags=tags) as run:
        mlflow.log_metrics({k: float(spec[k]) for k in ("val_acc", "test_acc", "params", "macs", "proxy_score")
                            if spec.get(k) is not None})
        mlflow.log_params({"rank": spec["rank"], "protocol": spec["protocol"], "stem": spec["stem"],
                           "adapter_init": spec["adapter_init"], "candidate": spec["id"]})
        logged = mlflow.pytorch.log_model(model, name="model", signature=infer_signature(x.numpy(), y.numpy()),
                                          input_example=x.numpy(), registered_model_name=name,
                                          code_paths=[str(Path(A.__file__).parent)], pip_requirements=_requirements(),
                                          extra_files=extra, serialization_format="pickle")
    version = int(logged.registered_model_version)
    for k, v in {**tags, "rank": spec["rank"], "val_acc": spec["val_acc"], "test_acc": spec["test_acc"]}.items():
        client.set_model_version_tag(name, str(version), k, str(v))
    client.update_model_version(name, str(version), description=(
        f"{spec['protocol']} fine-tuned assembly {spec['id']} (proxy rank {spec['rank']}): {_blocks_text(spec)}. "
        f"val acc {spec['val_acc']:.4f}, test acc {spec['test_acc']:.4f}, {spec['params']} params, "
        f"{spec['macs']} MACs. Model card, spec and weights: extra_files/ of this model; load with dery.load_assembly "
        "on the spec.")[:4900])
    return {**entry, "version": version, "run_id": run.info.run_id, "new": True}


def _best(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return min(entries, key=lambda e: (-e["val_acc"], e["rank"], e["protocol"]))


def register_models(spec_files: list[str], tracking_uri: str, experiment: str, out: str) -> dict[str, Any]:
    """Register every trained artifact among ``spec_files``; aliases per candidate and ``best`` per budget."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)  # log_model and registration go where the client points
    client = MlflowClient(tracking_uri)
    by_budget: dict[str, list[dict[str, Any]]] = defaultdict(list)
    skipped = []
    for p in spec_files:
        try:
            A.read_spec(p)
        except A.ArtifactError as why:
            if "records no trained assembly" not in str(why):
                raise
            skipped.append(str(p))  # fewer candidates than top_k: nothing was trained
            continue
        e = register_one(client, p, tracking_uri, experiment)
        by_budget[e["budget"]].append(e)
    summary: dict[str, Any] = {"tracking_uri": tracking_uri, "experiment": experiment, "skipped": skipped,
                               "budgets": {}}
    for budget, entries in sorted(by_budget.items()):
        name = registry_name(experiment, budget)
        client.update_registered_model(name, description=f"DeRy assemblies of experiment `{experiment}`, budget "
                                                         f"`{budget}`. Alias `best`: highest validation accuracy; "
                                                         "`rank<r>-<FZ|FT>`: each fine-tuned candidate.")
        for e in entries:
            client.set_registered_model_alias(name, candidate_alias(e["rank"], e["protocol"]), str(e["version"]))
        best = _best(entries)
        client.set_registered_model_alias(name, "best", str(best["version"]))
        summary["budgets"][budget] = {"name": name, "uri": f"models:/{name}@best", "best": best, "versions": entries}
        log.info("%s@best = version %s (%s, val acc %.4f)", name, best["version"], best["spec"], best["val_acc"])
    write_json(out, summary)
    return summary
