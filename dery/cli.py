"""``dery``: the result tables from MLflow, and the DVC team workflow around the Snakemake pipeline.

    dery run      [PARAMS_FILE] [SNAKEMAKE_ARGS...]   check the params file, then snakemake --cores all
    dery results  [--params FILE | --experiment NAME] [--tracking-uri URI] [--csv PATH]
    dery restore  [--no-pull] [--remote NAME]    after a clone: dvc pull, check, snakemake --touch
    dery verify                                  every DVC-tracked file matches dvc.lock?
    dery fetch-data DEST                         Fashion-MNIST into DEST (dvc.yaml's data stage)

Run them from the project root (where dvc.yaml and params/ are).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

DEFAULT_PARAMS = "params/default.yaml"
REPRODUCE_STAGE = "reproduce"


class CliError(RuntimeError):
    """A problem the user can fix; ``main`` prints it as one message (no traceback) and exits 1."""


# --- dery results ------------------------------------------------------------------------------

def _params(path: str | None) -> dict:
    from . import params_file

    if path is None:
        return {}
    try:
        return params_file.load(path)
    except params_file.ParamsFileError as exc:
        raise CliError(str(exc).removeprefix("dery: ")) from None


# --- dery run ----------------------------------------------------------------------------------

def snakemake_command(params: str | None, args: Sequence[str]) -> list[str]:
    """``snakemake`` with the user's arguments, ``--cores all`` unless they chose, the params file last (Snakemake's
    ``--configfile`` takes every word after it, so a target placed after it would be read as a second file)."""
    args = list(args[1:] if args[:1] == ["--"] else args)
    chose = any(re.fullmatch(r"-[cj](\d+|all)?|--(cores|jobs)(=.*)?", a) for a in args)
    return [sys.executable, "-m", "snakemake", *([] if chose else ["--cores", "all"]), *args,
            *(["--configfile", params] if params else [])]


def run(params: str | None, args: Sequence[str]) -> None:
    """Read the params file with dery's rules first (Snakemake's own loader answers a missing or non-UTF-8 file
    with a traceback and lets a repeated key overwrite the first), then hand over to Snakemake."""
    import os

    if params is not None:
        _params(params)
    in_config = False
    for a in args:  # Snakemake refuses these with a traceback
        if a.startswith("-"):
            in_config = a in ("--config", "-C")
        elif in_config and not re.fullmatch(r"[a-zA-Z_][\w-]*\w=.*", a, re.S):
            raise CliError(f"`--config {a}`: Snakemake's --config takes top-level KEY=VALUE pairs (a dotted "
                           "`partition.K=4` is not one, and values nested in {...} arrive as text); change nested "
                           "values in a copy of the params file and give that file instead.")
    cmd = snakemake_command(params, args)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # Snakemake takes the process over: its exit code and Ctrl-C behave as if called directly


def results(params_file: str | None, experiment: str | None, tracking_uri: str | None, csv: str | None) -> str:
    """The paper-style tables of one experiment, read from MLflow; also written as CSV."""
    from . import evaluation as E
    from . import tracking as T

    cfg = _params(params_file)
    experiment = experiment or cfg.get("name")
    if not experiment:
        raise CliError(f"{params_file} has no `name:`; pass --experiment NAME.")
    uri = tracking_uri or T.resolve_uri((cfg.get("tracking") or {}).get("uri"))
    try:
        df = T.runs(uri, experiment)
    except T.TrackingError as exc:
        raise CliError(str(exc)) from None
    table = E.summary_table(df)
    out = Path(csv or f"results/tables/{experiment}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"dery: wrote {out} ({len(table)} rows)", file=sys.stderr)
    return E.results_markdown(df, experiment, uri)


# --- DVC: verify, restore, fetch-data ----------------------------------------------------------

def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    """Run a tool of the project's environment (on PATH, else beside this Python); its error becomes ours."""
    exe = shutil.which(cmd[0]) or str(Path(sys.executable).parent / cmd[0])
    if not Path(exe).exists():
        raise CliError(f"`{cmd[0]}` not found; activate the project's environment (`. .venv/bin/activate`).")
    proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip()[-3000:]
        raise CliError(f"{what} failed (`{' '.join(cmd)}`):\n{detail}")
    return proc


def _describe(status: dict) -> list[str]:
    """`dvc status --json` as lines: which dependency or output differs from dvc.lock, and how."""
    lines = []
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                lines.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                for path, state in (paths.items() if isinstance(paths, dict) else [(paths, "")]):
                    lines.append(f"{stage}: {kind.replace('changed ', '')} {path}: {state}")
    return lines


def _changed_files() -> list[str]:
    """Files inside DVC-tracked outputs whose content differs from dvc.lock (or that are missing)."""
    data = json.loads(_run(["dvc", "data", "status", "--granular", "--json"], "dvc data status").stdout or "{}")
    unc = data.get("uncommitted", {})
    files = [f"{p} ({state})" for state in ("modified", "deleted") for p in unc.get(state, []) if not p.endswith("/")]
    files += [f"{p} (not in the cache)" for p in data.get("not_in_cache", []) if not p.endswith("/")]
    return sorted(files)


def verify() -> list[str]:
    """Everything that differs from dvc.lock: changed code/params/data, outputs whose content changed.

    An empty list means the workspace holds exactly what dvc.lock records, so Snakemake may take
    every output as current.
    """
    status = json.loads(_run(["dvc", "status", "--json"], "dvc status").stdout or "{}")
    problems = _describe(status)
    outs_changed = any("changed outs" in change for changes in status.values() for change in changes
                       if isinstance(change, dict))
    if outs_changed:  # name the very files, not just the output folder
        problems += [f"  file: {f}" for f in _changed_files()]
    return problems


def _locked_params_file(lock: Path = Path("dvc.lock")) -> str:
    """The params file the locked results were made with (params.yaml's params_file in dvc.lock)."""
    if not lock.is_file():
        raise CliError("no dvc.lock here: nothing was reproduced with DVC yet (run `dvc repro` and commit dvc.lock).")
    stage = (yaml.safe_load(lock.read_text()).get("stages") or {}).get(REPRODUCE_STAGE) or {}
    chosen = (stage.get("params") or {}).get("params.yaml", {}).get("params_file")
    if not chosen:
        raise CliError(f"dvc.lock has no `{REPRODUCE_STAGE}` stage with params.yaml:params_file; run `dvc repro`.")
    return chosen


VERIFY_FIX = ("Fix: restore the recorded content with `dvc checkout --force` (or `dvc pull --force`); if you changed "
              "code or params on purpose, run `dery restore` on a clean checkout first (e.g. `git stash`), then "
              "re-apply your change and let `dvc repro` (or snakemake) redo what it affects; if you re-made outputs "
              "on purpose, record them with `dvc commit`.")


def restore(pull: bool = True, remote: str | None = None) -> str:
    """Make a fresh clone resume where dvc.lock left off: pull, check every file, mark outputs current.

    `dvc pull` writes files with the checkout's timestamps, in no particular order; Snakemake (with
    no metadata in a fresh clone) would take inputs newer than outputs for changes and retrain.
    `snakemake --touch` marks the outputs current instead, which is only right when the files
    are exactly what dvc.lock records for the present code and params: checked first, and
    refused otherwise (a corrupted checkpoint is reported, never marked current).
    """
    params_file = _locked_params_file()
    if pull:
        try:
            _run(["dvc", "pull", *(["--remote", remote] if remote else [])], "dvc pull")
        except CliError as exc:
            raise CliError(f"{exc}\nNothing was marked current. A file missing from the remote, or one whose content "
                           "does not match its hash there (the remote re-hashes what it sends: `verify = true` in "
                           ".dvc/config), is not checked out. Fix: `dvc push` again from a clone that has the files "
                           "(`dery verify` passes there), or pull from another remote with --remote.") from None
    problems = verify()
    if problems:
        raise CliError("the workspace differs from dvc.lock, so its outputs were NOT marked current:\n  "
                       + "\n  ".join(problems) + "\n" + VERIFY_FIX)
    # --forceall: every job, in DAG order, so each also gets Snakemake's metadata (params, code, input
    # checksums) and a later params change re-runs exactly what it affects.
    # --keep-incomplete: should a touch fail (e.g. clock skew), keep the restored files, never delete them.
    proc = _run(["snakemake", "--touch", "--forceall", "--keep-incomplete", "--cores", "1",
                 "--configfile", params_file], "snakemake --touch")
    done = re.findall(r"(\d+) of \d+ steps \(100%\) done", proc.stdout + proc.stderr)
    jobs = done[-1] if done else "no"
    return (f"restored: every file matches dvc.lock; {jobs} jobs' outputs marked current for {params_file}. "
            f"`snakemake --cores all --configfile {params_file}` now re-runs only what you change.")


def fetch_data(dest: str) -> str:
    """Copy the four Fashion-MNIST idx files (Debian's folder, else torchvision's download) into ``dest``."""
    from . import data as D

    target = Path(dest)
    try:
        folder = D.find_fashion_mnist(None, target / "download")
    except D.DataError as exc:
        raise CliError(str(exc)) from None
    target.mkdir(parents=True, exist_ok=True)
    for stem in D.FILES.values():
        src = D._locate(folder, stem)  # the library's own lookup: .gz, plain, or torchvision's raw/ layout
        if src.resolve().parent != target.resolve():
            shutil.copyfile(src, target / src.name)
    shutil.rmtree(target / "download", ignore_errors=True)
    return f"Fashion-MNIST from {folder} in {target}"


# --- entry point -------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dery", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    n = sub.add_parser("run", help="check a params file, then run the workflow on it (snakemake --cores all "
                                   "[ARGS] --configfile FILE)")
    n.add_argument("params", nargs="?", help="params file, a .yaml (default: the embedded params/default.yaml)")
    n.add_argument("snakemake_args", nargs="*", help="passed to snakemake (targets, -n, --forcerun ...)")
    r = sub.add_parser("results", help="print the paper-style result tables from MLflow (Markdown) and write CSV")
    r.add_argument("--params", default=None,
                   help=f"params file: its `name:` is the experiment, its tracking.uri the store "
                        f"(default {DEFAULT_PARAMS})")
    r.add_argument("--experiment", help="MLflow experiment name (instead of a params file)")
    r.add_argument("--tracking-uri", help="MLflow store, e.g. http://127.0.0.1:5000 (default: $DERY_TRACKING_URI, "
                                          "the params file's tracking.uri, else sqlite:///results/mlflow.db)")
    r.add_argument("--csv", help="where to write the table as CSV (default results/tables/<experiment>.csv)")
    s = sub.add_parser("restore", help="after a clone: dvc pull, check every file against dvc.lock, snakemake --touch")
    s.add_argument("--no-pull", action="store_true", help="files are already pulled or checked out")
    s.add_argument("--remote", help="DVC remote to pull from (default: the default remote in .dvc/config)")
    sub.add_parser("verify", help="check that code, params and every DVC-tracked file match dvc.lock")
    f = sub.add_parser("fetch-data", help="Fashion-MNIST into a folder (dvc.yaml's fashion_mnist stage)")
    f.add_argument("dest")
    g = sub.add_parser("fingerprint", help="compare two runs' results/fingerprint.json: the first stage that differs")
    g.add_argument("a")
    g.add_argument("b")
    t = sub.add_parser("stability", help="partition and candidates across partition seeds (and against another run)")
    t.add_argument("--params", default=DEFAULT_PARAMS)
    t.add_argument("--results", default="results")
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t.add_argument("--other", help="another finished run's results/ folder to compare with")
    t.add_argument("--out", default="results/stability.md")
    e = sub.add_parser("repro-env", help="print the environment strict mode sets (to run a stage outside snakemake)")
    e.add_argument("--params", default=DEFAULT_PARAMS)
    return p


def _filled(params_file: str) -> dict:
    """The params file with the schema's defaults filled in, as the workflow sees it."""
    from snakemake.utils import validate

    cfg = _params(params_file)
    validate(cfg, str(Path(__file__).resolve().parents[1] / "workflow/schemas/params.schema.yaml"))
    return cfg


def stability(params_file: str, results: str, seeds: list[int], other: str | None, out: str) -> str:
    from . import stability as ST

    cfg = _filled(params_file)
    if not (Path(results) / "similarity").is_dir():
        raise CliError(f"{results}/similarity not found; run `snakemake --cores all` first (or pass --results).")
    rows = ST.across_seeds(results, {"partition": cfg["partition"], "stem": cfg["reassembly"]["stem"],
                                     "reassembly": cfg["reassembly"], "seed": cfg["seed"]},
                           cfg["reassembly"]["budgets"], seeds)
    md = ST.markdown(rows, ST.between_runs(results, other) if other else None, cfg["name"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(md)
    return md


def fingerprint_diff(a: str, b: str) -> tuple[bool, str]:
    import json

    from . import fingerprint as FP

    docs = []
    for path in (a, b):
        try:
            docs.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {path} ({exc}); give two results/fingerprint.json files "
                           "(snakemake writes one per run).") from None
    first, lines = FP.compare(*docs)
    head = ("identical: every stage has the same hash" if first is None else
            f"the runs first differ at stage `{first}` (every stage before it is bit-identical)")
    return first is None, "\n".join([head, *lines])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"] and not {"-h", "--help"} & set(argv[1:2]):
        # by hand: argparse would take snakemake's options (-n, --forcerun) for its own
        rest = argv[1:]
        params = rest.pop(0) if rest and rest[0].endswith((".yaml", ".yml")) else None
        try:
            run(params, rest)
        except CliError as exc:
            print(f"dery run: {exc}", file=sys.stderr)
            return 2
    args = _parser().parse_args(argv)
    try:
        if args.command == "results":
            params_file = args.params if args.params or args.experiment else DEFAULT_PARAMS
            print(results(params_file, args.experiment, args.tracking_uri, args.csv), end="")
        elif args.command == "restore":
            print(restore(pull=not args.no_pull, remote=args.remote))
        elif args.command == "verify":
            problems = verify()
            if problems:
                raise CliError("the workspace differs from dvc.lock:\n  " + "\n  ".join(problems) + "\n" + VERIFY_FIX)
            print("verified: code, params and every DVC-tracked file match dvc.lock")
        elif args.command == "fetch-data":
            print(fetch_data(args.dest))
        elif args.command == "fingerprint":
            same, text = fingerprint_diff(args.a, args.b)
            print(text)
            return 0 if same else 3
        elif args.command == "stability":
            print(stability(args.params, args.results, args.seeds, args.other, args.out), end="")
        elif args.command == "repro-env":
            from . import repro

            for k, v in repro.environment(repro.settings(_params(args.params))).items():
                print(f"export {k}='{v}'")
    except CliError as exc:
        print(f"dery {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
