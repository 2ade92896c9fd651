"""Pre-flight checks: every params problem is found before any job runs, and reported as one
plain paragraph naming the problem and the fix (no traceback).

The JSON Schema (workflow/schemas/params.schema.yaml) catches types, ranges and unknown keys;
the checks here catch what a schema cannot: architecture names, weights files, data folders,
K against the shallowest model, split sizes, paths that would write outside the project.
"""
from __future__ import annotations

import difflib
import math
import os
import socket
from pathlib import Path
from typing import Any

import yaml

from .params_file import MAX_VALUES, clip, too_many_values


class ParamsError(ValueError):
    """A problem in the params file; ``str()`` is the user-facing paragraph."""


def _schema_problems(config: dict, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        if err.validator == "additionalProperties":
            allowed = list(err.schema.get("properties", {}))
            extra = [k for k in err.instance if k not in allowed]
            hints = [_unknown_key_hint(str(k), allowed) for k in extra]
            out.append(f"`{where}` has unknown key(s) {', '.join(hints)}; allowed: {', '.join(allowed)}.")
        else:
            desc = err.schema.get("description")
            out.append(f"`{where}`: {_schema_message(err)}" + (f" (expected: {desc})" if desc else "") + ".")
    return out


def _unknown_key_hint(key: str, allowed: list[str]) -> str:
    head, _, rest = key.partition(".")
    if rest and head in allowed:  # `partition.K: 4` at the top level is a key named "partition.K"
        return (f"`{clip(key, 60, quote=False)}` (a dotted name is not a path here: nest it, "
                f"`{head}: {{{clip(rest, 40, quote=False).split('.')[0]}: ...}}`)")
    match = difflib.get_close_matches(key, allowed, 1)
    return f"`{clip(key, 60, quote=False)}`" + (f" (did you mean `{match[0]}`?)" if match else "")


def _quoted_number(value: Any, want: Any) -> bool:
    """A number given as text: what Snakemake's `--config 'partition={K: 4}'` makes of every nested value."""
    if not isinstance(value, str) or "string" in (want if isinstance(want, list) else [want]):
        return False
    try:
        float(value)
    except ValueError:
        return value in ("true", "false", "True", "False")
    return True


def _schema_message(err) -> str:
    """jsonschema's message, but quoting the offending value in bounded length (its own messages print the
    whole value, which for a value built from YAML aliases is gigabytes), and naming minimum counts."""
    inst, want = err.instance, err.validator_value
    if err.validator == "type":
        if _quoted_number(inst, want):
            return (f"{clip(inst)} is text, not {want} (Snakemake's --config reads every value inside {{...}} as "
                    "text: change the value in a copy of the params file, or drop the quotes there)")
        return f"{clip(inst)} is not of type {want}"
    if err.validator == "enum":
        return f"{clip(inst)} is not one of {want}"
    if err.validator in ("minItems", "maxItems") and isinstance(inst, (list, dict)):
        bound = "at least" if err.validator == "minItems" else "at most"
        return f"has {len(inst)} item{'s' * (len(inst) != 1)}; it needs {bound} {want}"
    if err.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        rel = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[err.validator]
        return f"{clip(inst)} is out of range; it must be {rel} {want}"
    return clip(err.message, 300)


# Keys where `.inf` means "no limit" (a budget without a params or MAC cap); everywhere else a number must be finite.
NO_LIMIT_KEYS = {("reassembly", "budgets", "*", "params_m"), ("reassembly", "budgets", "*", "macs_m")}


def non_finite_problems(config: Any, path: tuple = ()) -> list[str]:
    """NaN anywhere, and infinity outside NO_LIMIT_KEYS: JSON Schema's bounds let both through (NaN compares
    false with every bound), so `params_m: .nan` would run the whole DAG without a limit."""
    if isinstance(config, dict):
        return [p for k, v in config.items() for p in non_finite_problems(v, (*path, str(k)))]
    if isinstance(config, list):
        return [p for i, v in enumerate(config) for p in non_finite_problems(v, (*path, i))]
    if isinstance(config, float) and not math.isfinite(config):
        where = ".".join(str(p) for p in path)
        generic = tuple("*" if isinstance(p, int) else p for p in path)
        if math.isinf(config) and config > 0 and generic in NO_LIMIT_KEYS:
            return []
        allowed = " (`.inf` means no limit here; NaN never does)" if generic in NO_LIMIT_KEYS else ""
        return [f"`{where}` is {config}, not a finite number{allowed}; give a number."]
    return []


def _inside(path: Path, roots: list[Path]) -> bool:
    path = path.resolve()
    return any(path == r or r in path.parents for r in roots)


def _meta_model(entry: dict):
    """The architecture on the meta device: module tree and feature_info at no memory or time cost."""
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(entry["arch"], pretrained=False, num_classes=10, **(entry.get("kwargs") or {}))


def _input_size_problem(model) -> str | None:
    """A forward pass on the meta device at the size every stage feeds (free: no memory, no arithmetic), so a
    model that cannot take that input (a ViT built for 224 px) is found here, not by the pretraining job."""
    import torch

    from .data import IMAGE_SIZE

    try:
        with torch.device("meta"), torch.no_grad():
            model(torch.empty(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    except Exception as exc:  # noqa: BLE001 - timm asserts, torch raises RuntimeError/ValueError on shapes
        return (f"cannot run on the {IMAGE_SIZE}x{IMAGE_SIZE} images every stage feeds it ({type(exc).__name__}: "
                f"{clip(str(exc), 200)}). For a ViT or Swin give `img_size: {IMAGE_SIZE}` in its kwargs (and a "
                "`patch_size`/`window_size` that divides it); for a CNN, fewer downsampling stages.")
    return None


def tracking_problems(uri: str, where: str = "`tracking.uri`", timeout_s: float = 3.0) -> list[str]:
    """The MLflow store, before any job: MLflow 3 refuses a folder store (found only by the ingest, after every
    job ran), and a server that does not answer is found here by a fast probe of its /health endpoint."""
    from . import tracking

    if uri.startswith("file:") or "://" not in uri:
        return [f"{where} = {clip(uri)} is a folder store, which MLflow 3 refuses; use a SQLite file under results/ "
                "(sqlite:///results/mlflow.db, the default when `tracking.uri` is null) or a server (http://HOST:PORT)."]
    if uri.startswith(("http://", "https://")):
        try:
            tracking.check_reachable(uri, timeout_s)
        except tracking.StoreUnavailable as exc:
            return [f"{where}: {exc}"]
    return []


def _source_problems(config: dict) -> list[str]:
    """Exact image counts per source, as split_data will draw them (needs only the label file)."""
    import numpy as np

    from .data import TARGET_POOL, DataError, find_fashion_mnist, load_labels

    try:
        labels = load_labels(find_fashion_mnist(config["data"].get("root")))
    except DataError:
        return []  # not on disk yet: split_data downloads it and checks the same thing
    rest = np.random.default_rng(config["seed"]).permutation(len(labels))[TARGET_POOL:]
    per_source = config["zoo_training"]["images_per_source"]
    out = []
    for name, classes in config["sources"].items():
        available = int(np.isin(labels[rest], classes).sum())
        if available < per_source:
            out.append(f"source `{name}` (classes {classes}) has {available} images outside the target pool, "
                       f"fewer than `zoo_training.images_per_source` = {per_source}; lower it"
                       + (" or give the source classes." if available else "."))
    return out


def semantic_problems(config: dict, workdir: Path) -> list[str]:
    from . import features, zoo
    from .data import TARGET_POOL

    problems: list[str] = []
    ids = [m["id"] for m in config["zoo"]]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        problems.append(f"zoo ids {dup} are used more than once; give every zoo entry a unique `id`.")
    budgets = [b["name"] for b in config["reassembly"]["budgets"]]
    dupb = sorted({b for b in budgets if budgets.count(b) > 1})
    if dupb:
        problems.append(f"budget names {dupb} are used more than once; give every budget a unique `name`.")
    roots = [(workdir / "results").resolve(), (workdir / "resources").resolve()]
    dl = Path(config["data"]["download_dir"])
    if not _inside(workdir / dl, roots):
        problems.append(f"`data.download_dir` = {dl} would write outside the project; use a folder under "
                        "resources/ (the default is resources/fashion-mnist).")
    uri = (config.get("tracking") or {}).get("uri") or ""
    if uri.startswith("sqlite:///") and not _inside(workdir / uri[len("sqlite:///"):], roots):
        problems.append(f"`tracking.uri` = {clip(uri)} would write an MLflow store outside the project; put the "
                        "SQLite file under results/ or leave `tracking.uri` null.")
    env_uri = os.environ.get("DERY_TRACKING_URI")
    if env_uri or uri:
        problems += tracking_problems(env_uri or uri, "$DERY_TRACKING_URI" if env_uri else "`tracking.uri`")
    for stage in ("zoo_training", "finetune"):
        c = config[stage]
        if c["warmup_epochs"] > c["epochs"]:
            problems.append(f"`{stage}.warmup_epochs` = {c['warmup_epochs']} is longer than `{stage}.epochs` = "
                            f"{c['epochs']}: the learning rate would never reach `{stage}.lr`; lower the warm-up.")
    proxy = config["proxy"]
    if proxy["batches"] * proxy["batch_size"] > config["target"]["train_images"]:
        problems.append(f"`proxy.batches` x `proxy.batch_size` = {proxy['batches'] * proxy['batch_size']} images is "
                        f"more than the target train split (`target.train_images` = "
                        f"{config['target']['train_images']}); lower one of them.")
    root = config["data"].get("root")
    if root is not None:
        from .data import DataError, find_fashion_mnist

        try:
            find_fashion_mnist(root)
        except DataError as exc:
            problems.append(f"`data.root`: {exc}")
    target = config["target"]
    if target["train_images"] + target["val_images"] > TARGET_POOL:
        problems.append(f"`target.train_images` + `target.val_images` = {target['train_images'] + target['val_images']}"
                        f" exceeds the {TARGET_POOL}-image target pool; lower them.")
    if config["features"]["probe_images"] > target["train_images"]:
        problems.append(f"`features.probe_images` = {config['features']['probe_images']} is larger than the target "
                        f"train split (`target.train_images` = {target['train_images']}); lower it or raise the split.")
    if config["finetune"]["top_k"] > config["reassembly"]["max_candidates"]:
        problems.append(f"`finetune.top_k` = {config['finetune']['top_k']} exceeds `reassembly.max_candidates` = "
                        f"{config['reassembly']['max_candidates']}; lower top_k or raise max_candidates.")
    for pair in config["reassembly"]["forbid"]:
        if len({"family" if x in ("cnn", "transformer") else "layout" for x in pair}) > 1:
            problems.append(f"`reassembly.forbid` pair {pair} mixes a model family with a tensor layout; write "
                            "[transformer, cnn] (families, the authors' rule) or [tokens, maps] (layouts).")
    if config["data"].get("dataset"):  # an ImageFolder dataset instead of Fashion-MNIST (dery/datasets.py)
        from .datasets import folder_problems

        problems += folder_problems(config["data"]["dataset"], workdir)
    else:
        problems += _source_problems(config)
    node_counts = {}
    for i, entry in enumerate(config["zoo"]):
        where = f"zoo entry {i + 1} (`{entry['id']}`)"
        if entry["source"] not in config["sources"]:
            problems.append(f"{where}: source `{entry['source']}` is not defined under `sources` "
                            f"({', '.join(config['sources'])}); fix its `source`.")
        try:
            zoo.check_arch(entry["arch"])
        except zoo.ZooError as exc:
            problems.append(f"{where}: {exc}")
            continue
        try:
            model = _meta_model(entry)
        except Exception as exc:  # timm raises TypeError/AssertionError/ValueError for bad kwargs
            problems.append(f"{where}: timm cannot build `{entry['arch']}` with kwargs {clip(entry.get('kwargs'))}: "
                            f"{type(exc).__name__}: {clip(str(exc), 300)}. Fix its `kwargs`.")
            continue
        problem = _input_size_problem(model)
        if problem:
            problems.append(f"{where}: `{entry['arch']}` with kwargs {clip(entry.get('kwargs'))} {problem}")
            continue
        try:
            node_counts[entry["id"]] = len(features.node_names(model))
        except features.DissectionError as exc:
            problems.append(f"{where}: {exc} Choose a timm family dery can dissect (ResNet, MobileNet/EfficientNet, "
                            "RegNet, ConvNeXt, ViT, Swin, ...).")
        if entry.get("weights"):
            from . import hub  # safe read, `remap:`, the family's checkpoint filter, then every key and shape

            problem = hub.check(entry["arch"], entry.get("kwargs"), workdir / entry["weights"], entry.get("remap"))
            if problem:
                problems.append(f"{where}: {problem}")
    k = config["partition"]["K"]
    if node_counts and k > min(node_counts.values()):
        shallow = min(node_counts, key=node_counts.get)
        problems.append(f"`partition.K` = {k} is larger than the node count of `{shallow}` ({node_counts[shallow]} "
                        f"blocks); lower K to at most {node_counts[shallow]} or drop that model.")
    return problems


def check(config: dict, schema_path: str | os.PathLike, workdir: str | os.PathLike = ".") -> None:
    """Raise ParamsError with every problem found (schema first, then semantics)."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    huge = too_many_values(config, "the params (file and --config overrides together)", MAX_VALUES)
    problems = [huge] if huge else non_finite_problems(config) + _schema_problems(config, schema)
    if not problems:
        import copy

        from snakemake.utils import validate

        filled = copy.deepcopy(config)
        validate(filled, schema_path)  # fills the schema's defaults, so the semantic checks see every key
        problems = semantic_problems(filled, Path(workdir).resolve())
    if problems:
        raise ParamsError("dery: the params file has " + ("a problem" if len(problems) == 1 else
                          f"{len(problems)} problems") + " (nothing was run, no result was touched):\n- "
                          + "\n- ".join(problems))


LOCK_HOST = "dery-lock-host"  # in .snakemake/: the host whose run holds (or last held) the locks


def clear_stale_lock(workdir: str | os.PathLike = ".") -> bool:
    """Remove Snakemake's lock when it was left by a killed run of this host and no process works here any more.

    Snakemake leaves ``.snakemake/locks`` behind after SIGKILL and then refuses to start until ``--unlock``. We
    unlock only when the run that took the lock was on this host (``.snakemake/dery-lock-host``, written by
    ``claim_lock_host``) and no snakemake process of this host has this working directory: on a shared filesystem
    a run of another host is invisible to ``psutil``, so its lock is never ours to remove (Snakemake then says
    to run ``snakemake --unlock`` once that run is known to be dead). Call it from the main Snakemake process
    only: jobs re-parse the Snakefile while their own run holds the lock.
    """
    import psutil

    workdir = Path(workdir).resolve()
    locks = workdir / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return False
    host = workdir / ".snakemake" / LOCK_HOST
    if not host.exists() or host.read_text().strip() != socket.gethostname():
        return False
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            if proc.info["pid"] != me and proc.info["cwd"] and Path(proc.info["cwd"]).resolve() == workdir \
                    and any("snakemake" in part for part in (proc.info["cmdline"] or [])):
                return False
        except (psutil.Error, OSError):
            continue
    for f in locks.iterdir():
        f.unlink(missing_ok=True)
    return True


def claim_lock_host(workdir: str | os.PathLike = ".") -> None:
    """Record this host as the one whose run takes the lock, unless another run holds it now (then Snakemake
    refuses to start and the record must keep naming that run's host)."""
    meta = Path(workdir) / ".snakemake"
    locks = meta / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        return
    meta.mkdir(exist_ok=True)
    (meta / LOCK_HOST).write_text(socket.gethostname() + "\n")
