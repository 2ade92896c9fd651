import hashlib
import json
from itertools import combinations_with_replacement
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/params.schema.yaml")

ROOT = Path(workflow.basedir)
MODELS = [m["id"] for m in config["zoo"]]
ZOO = {m["id"]: m for m in config["zoo"]}
BUDGETS = {b["name"]: b for b in config["reassembly"]["budgets"]}
PAIRS = [f"{a}.vs.{b}" for a, b in combinations_with_replacement(sorted(MODELS), 2)]
RANKS = list(range(config["finetune"]["top_k"]))
PROTOCOLS = config["finetune"]["protocols"]
CONDA_ENV = "../envs/dery.yaml"


def code(*modules):
    """Paths of the dery modules a job runs (Snakemake does not track edits to imported code)."""
    return [str(ROOT / "dery" / f"{m}.py") for m in modules]


def tracking_uri():
    uri = config.get("tracking", {}).get("uri")
    return uri or "sqlite:///" + str(Path("results/mlflow.db").resolve())


def params_hash():
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def metric_files():
    files = [f"results/zoo/{m}.metrics.json" for m in MODELS]
    files += ["results/partition/equivalence_sets.metrics.json"]
    for b in BUDGETS:
        files += [f"results/reassembly/{b}/candidates.metrics.json", f"results/proxy/{b}/ranking.metrics.json"]
        files += [f"results/finetune/{b}/rank{r}_{p}.metrics.json" for r in RANKS for p in PROTOCOLS]
        if config["finetune"]["scratch_baseline"]:
            files.append(f"results/finetune/{b}/scratch_FT.metrics.json")
    if config["finetune"]["zoo_baselines"]:
        files += [f"results/finetune/zoo/{m}_FT.metrics.json" for m in MODELS]
    return files


def finetune_cfg():
    return {k: v for k, v in config["finetune"].items() if k not in ("top_k", "protocols", "zoo_baselines", "scratch_baseline")}
