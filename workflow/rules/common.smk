import hashlib
import json
import os
from itertools import combinations_with_replacement
from pathlib import Path

import sys

from snakemake.utils import validate

from dery import integrity, params_file, repro, tracking
from dery.checks import ParamsError, check, claim_lock_host, clear_stale_lock

# Problems in the params file stop here, before any job, as one paragraph without a traceback. Snakemake has
# loaded the files already (keeping the last of two equal keys, expanding YAML aliases); read them again with
# dery's rules, and bound the size of what the checks below traverse and quote.
_given = [os.path.relpath(f) for f in workflow.overwrite_configfiles]
try:
    for _f in _given:
        params_file.load(_f)
    _huge = params_file.too_many_values(
        config, "the params (file and --config overrides together)"
    )
    if _huge:
        raise ParamsError(
            f"dery: the params file has a problem (nothing was run, no result was touched):\n- {_huge}"
        )
    if (
        workflow.is_main_process
    ):  # once per run, not in every job that re-parses this file
        print(
            f"dery: params file {', '.join(_given) or 'params/default.yaml'} (`{params_file.clip(config.get('name'), 60, quote=False)}`;"
            " keys it leaves out take the schema's defaults)",
            file=sys.stderr,
        )
    check(config, Path(workflow.basedir) / "workflow/schemas/params.schema.yaml")
except (ParamsError, params_file.ParamsFileError) as problem:
    sys.exit(str(problem))
validate(config, schema="../schemas/params.schema.yaml")
# Before any job starts: the libraries read their instruction-set caps when they load, so jobs (and
# their DDP children, and jobs on cluster nodes, which re-parse this file) must inherit them.
# jobs inherit it and name it in the commands their errors advise (dery.integrity.rebuild_command)
integrity.remember_params_file(_given)
REPRO = repro.settings(config)
repro.apply(config)
# Once, in the main process: jobs re-parse this file while their own run holds the lock.
if workflow.is_main_process:
    if clear_stale_lock():
        print(
            "dery: removed the lock of a killed Snakemake run of this host in this directory",
            file=sys.stderr,
        )
    claim_lock_host()

ROOT = Path(workflow.basedir)
MODELS = [m["id"] for m in config["zoo"]]
ZOO = {m["id"]: m for m in config["zoo"]}
BUDGETS = {b["name"]: b for b in config["reassembly"]["budgets"]}
PAIRS = [f"{a}.vs.{b}" for a, b in combinations_with_replacement(sorted(MODELS), 2)]
RANKS = list(range(config["finetune"]["top_k"]))
PROTOCOLS = config["finetune"]["protocols"]
CONDA_ENV = "../envs/dery.yaml"
INGESTED = "results/mlflow/ingested.json"  # the ingest's marker; the store itself is outside Snakemake's view


def code(*modules):
    """Paths of the dery modules a job runs (Snakemake does not track edits to imported code).

    Relative to the working directory when the workflow runs in its own folder, so a copy of a
    finished project (another clone, `dvc pull` elsewhere) sees the same input set and re-runs nothing.
    """
    paths = [ROOT / "dery" / f"{m}.py" for m in modules]
    try:
        return [str(p.relative_to(Path.cwd())) for p in paths]
    except ValueError:
        return [str(p) for p in paths]


def tracking_uri():
    """$DERY_TRACKING_URI, else the params file's tracking.uri, else sqlite:///results/mlflow.db.

    Relative on purpose: the same params give the same URI in every clone (no spurious re-runs of
    the ingest after `dvc pull` elsewhere). Same precedence as dery.tracking.resolve_uri.
    """
    return (
        os.environ.get("DERY_TRACKING_URI")
        or config["tracking"].get("uri")
        or "sqlite:///results/mlflow.db"
    )


if workflow.is_main_process and (
    _lost := tracking.lost_store(tracking_uri(), config["name"], INGESTED)
):
    # Nothing is lost (the *.metrics.json records are the source of truth): the ingest runs again and fills it.
    Path(INGESTED).unlink()
    print(
        f"dery: {_lost}; it is rebuilt from the results/**/*.metrics.json records (the ingest and the "
        "tables after it run again)",
        file=sys.stderr,
    )


def params_hash():
    """Hash of the experiment's params; where results are logged (tracking) is not one of them."""
    science = {k: v for k, v in config.items() if k != "tracking"}
    return hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()[:12]


def metric_files():
    files = [f"results/zoo/{m}.metrics.json" for m in MODELS]
    files += ["results/partition/equivalence_sets.metrics.json"]
    for b in BUDGETS:
        files += [
            f"results/reassembly/{b}/candidates.metrics.json",
            f"results/proxy/{b}/ranking.metrics.json",
        ]
        files += [
            f"results/finetune/{b}/rank{r}_{p}.metrics.json"
            for r in RANKS
            for p in PROTOCOLS
        ]
        if config["finetune"]["scratch_baseline"]:
            files.append(f"results/finetune/{b}/scratch_FT.metrics.json")
    if config["finetune"]["zoo_baselines"]:
        files += [f"results/finetune/zoo/{m}_FT.metrics.json" for m in MODELS]
    return files


# What the fingerprint hashes, stage by stage (dery/fingerprint.py): the files that carry each stage's result.
FINGERPRINT_FILES = {
    "zoo": [f"results/zoo/{m}.safetensors" for m in MODELS],
    "features": [f"results/features/{m}.npz" for m in MODELS],
    "similarity": [f"results/similarity/{p}.npz" for p in PAIRS],
    "partition": ["results/partition/equivalence_sets.json"],
    "block_costs": ["results/partition/block_costs.json"],
    "candidates": [f"results/reassembly/{b}/candidates.json" for b in BUDGETS],
    "proxy": [f"results/proxy/{b}/ranking.json" for b in BUDGETS],
    "finetune": [f for f in metric_files() if f.startswith("results/finetune/")],
}


def finetune_cfg():
    return {
        k: v
        for k, v in config["finetune"].items()
        if k not in ("top_k", "protocols", "zoo_baselines", "scratch_baseline")
    }


def adapter_training_cfg():
    """stitching.train_* for the stages that fine-tune assemblies, inside their cfg (the scripts hand cfg to the
    stage). Off (train_steps 0) it adds nothing: the jobs' params, records and results stay as they were.
    """
    s = config["stitching"]
    if not s["train_steps"]:
        return {}
    return {
        "adapter_training": {
            "steps": s["train_steps"],
            "lr": s["train_lr"],
            "batch_size": s["train_batch_size"],
        }
    }
