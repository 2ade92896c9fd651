"""Row 6: the whole pipeline under Snakemake.

(a) The last complete cold run in this checkout (normally ``snakemake --cores all``, the embedded default): its end-to-
    end time from Snakemake's log, per-rule time (the rules' ``benchmark:`` files; the log's job times for rules
    without one) and peak memory, the longest jobs; and, from a dry run in a temporary copy of the finished project
    with one budget changed, which jobs a budget change re-runs and the share of the run's job time they took.
(b) The smoke config run cold in a temporary copy of the project (``--cores 2``), then re-run with one budget value
    changed: both timed, the ratio against the 25% target.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .common import ROOT, Result, Row, fmt_s, yes

PROJECT_ITEMS = ("Snakefile", "workflow", "profiles", "params", "dery")   # as tests/conftest.py: what a run needs
DEFAULT_TARGET_S, SMOKE_TARGET_S, RERUN_TARGET = 20 * 60, 3 * 60, 0.25
_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
_FIELD = re.compile(r"^\s+(\w+): (.*)$")
_DONE = re.compile(r"^Finished jobid: (\d+) \(Rule: (\S+)\)$")


@dataclass
class Job:
    rule: str
    jobid: str = ""
    output: str = ""
    benchmark: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    bench: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """The benchmark file's wall seconds, else the log's start-to-finish time."""
        if "s" in self.bench:
            return self.bench["s"]
        return (self.end - self.start).total_seconds() if self.start and self.end else float("nan")


@dataclass
class Log:
    path: Path
    configfiles: str = ""
    command: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    complete: bool = False
    jobs: list[Job] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds() if self.start and self.end else float("nan")


def parse_log(text: str, path: Path | None = None) -> Log:
    """Jobs (rule, first output, benchmark file, start/finish times) of a Snakemake log or dry-run printout."""
    log = Log(path or Path("-"))
    stamp: dt.datetime | None = None
    by_id: dict[str, Job] = {}
    job: Job | None = None
    for line in text.splitlines():
        if m := re.match(r"^\s*Date: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", line):
            log.start = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
        elif m := re.match(r"^\s*Config file\(s\): (.*)$", line):
            log.configfiles = m.group(1)
        elif m := re.match(r"^\s*Command: (.*)$", line):
            log.command = m.group(1)
        elif m := _STAMP.match(line):
            stamp = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            log.end = stamp
            log.start = log.start or stamp
        elif m := _RULE.match(line):
            job = Job(m.group(1), start=stamp)
            log.jobs.append(job)
        elif job is not None and (m := _FIELD.match(line)):
            key, val = m.groups()
            if key == "jobid":
                job.jobid = val.strip()
                by_id[job.jobid] = job
            elif key == "output":
                job.output = val.split(",")[0].strip()
            elif key == "benchmark":
                job.benchmark = val.strip()
        elif m := _DONE.match(line):
            job = None
            if m.group(1) in by_id:
                by_id[m.group(1)].end = stamp
        elif "steps (100%) done" in line:
            log.complete = True
        else:
            job = None if line and not line.startswith(" ") else job
    return log


def read_benchmark(path: Path) -> dict[str, float]:
    """The last row of a Snakemake benchmark TSV (s, max_rss [MB], cpu_time, ...); {} if unreadable."""
    try:
        rows = list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))
        out = {}
        for k, v in rows[-1].items():
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                pass
        return out
    except (OSError, IndexError):
        return {}


def latest_complete_log(project: Path, cold: bool = True) -> Log | None:
    """The newest Snakemake log of a run that finished every job (and, with ``cold``, that ran the first rule)."""
    for path in sorted((project / ".snakemake" / "log").glob("*.snakemake.log"), reverse=True):
        log = parse_log(path.read_text(errors="replace"), path)
        if re.search(r"(^|\s)(--touch|-t|-n|--dry-?run|--summary|-S)(\s|$)", log.command):
            continue  # marked files up to date or listed jobs: ran nothing
        if log.complete and log.jobs and (not cold or any(j.rule == "split_data" for j in log.jobs)):
            for j in log.jobs:
                if j.benchmark:
                    j.bench = read_benchmark(project / j.benchmark)
            return log
    return None


def per_rule(jobs: list[Job]) -> list[dict[str, Any]]:
    rules: dict[str, dict[str, Any]] = {}
    for j in jobs:
        r = rules.setdefault(j.rule, {"rule": j.rule, "jobs": 0, "s": 0.0, "cpu": 0.0, "rss": float("nan"),
                                      "timed_by": set()})
        r["jobs"] += 1
        if j.seconds == j.seconds:
            r["s"] += j.seconds
        r["cpu"] += j.bench.get("cpu_time", 0.0)
        if "max_rss" in j.bench:
            r["rss"] = j.bench["max_rss"] if r["rss"] != r["rss"] else max(r["rss"], j.bench["max_rss"])
        r["timed_by"].add("benchmark" if "s" in j.bench else "log")
    return sorted(rules.values(), key=lambda r: -r["s"])


def rule_table(jobs: list[Job], top: int = 5) -> str:
    jobs = [j for j in jobs if j.rule != "all"]   # the default target: no work
    lines = ["| rule | jobs | wall s (sum) | CPU s (sum) | peak max_rss | from |", "|---|---|---|---|---|---|"]
    for r in per_rule(jobs):
        rss = f"{r['rss']:.0f} MB" if r["rss"] == r["rss"] else "-"
        cpu = f"{r['cpu']:.0f}" if "benchmark" in r["timed_by"] else "-"
        lines.append(f"| {r['rule']} | {r['jobs']} | {r['s']:.0f} | {cpu} | {rss} | "
                     f"{' + '.join(sorted(r['timed_by']))} |")
    total = sum(j.seconds for j in jobs if j.seconds == j.seconds)
    lines.append(f"| **total** | {len(jobs)} | {total:.0f} | | "
                 f"{max((j.bench.get('max_rss', 0) for j in jobs), default=0):.0f} MB | |")
    longest = sorted((j for j in jobs if j.seconds == j.seconds), key=lambda j: -j.seconds)[:top]
    lines += ["", "Longest jobs: " + "; ".join(f"{j.rule} ({Path(j.benchmark or j.output).stem}) {j.seconds:.0f} s"
                                              for j in longest) + "."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- runs in a copy

def new_project(dest: Path, with_results_from: Path | None = None) -> Path:
    """A fresh copy of the workflow (as tests/conftest.py); optionally with a finished run's results and Snakemake
    metadata (timestamps kept), for dry runs against it."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in PROJECT_ITEMS:
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / item)
    if with_results_from is not None:
        shutil.copytree(with_results_from / "results", dest / "results", symlinks=True)
        shutil.copytree(with_results_from / ".snakemake" / "metadata", dest / ".snakemake" / "metadata")
    return dest


def snakemake(work: Path, *args: str, timeout: float | None = None) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=work, capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed in {work}:\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return proc, time.perf_counter() - t


def budget_changed(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The same params with the first budget's parameter limit raised by 10% (still feasible)."""
    new = yaml.safe_load(yaml.safe_dump(params, sort_keys=False))
    b = new["reassembly"]["budgets"][0]
    old = b["params_m"]
    b["params_m"] = round(old * 1.1, 3)
    return new, f"reassembly.budgets[{b['name']}].params_m {old} -> {b['params_m']}"


def write_params(work: Path, name: str, params: dict[str, Any]) -> str:
    rel = f"params/{name}"
    (work / rel).write_text(yaml.safe_dump(params, sort_keys=False))
    return rel


def _params_file(params_file: str | Path) -> Path:
    p = Path(params_file)
    return p if p.is_absolute() else ROOT / p


def _first_configfile(text: str) -> str:
    import ast

    try:
        files = ast.literal_eval(text)
        return str(files[-1]) if files else "params/default.yaml"
    except (ValueError, SyntaxError):
        return "params/default.yaml"


def dry_run_rerun(project: Path, configfile: str, tmp: Path) -> dict[str, Any] | None:
    """Jobs a one-budget change would re-run in a finished project (dry run in a copy), with the share of the run's
    job seconds they took."""
    log = latest_complete_log(project)
    if log is None:
        return None
    src = _params_file(configfile)
    work = new_project(tmp / "dry", with_results_from=project)
    rel = write_params(work, "bench_same.yaml", yaml.safe_load(src.read_text()))
    base, _ = snakemake(work, "-n", "--cores", "2", "--configfile", rel)
    changed, what = budget_changed(yaml.safe_load(src.read_text()))
    rel2 = write_params(work, "bench_budget.yaml", changed)
    out, _ = snakemake(work, "-n", "--cores", "2", "--configfile", rel2)
    base_jobs = parse_log(base.stdout + base.stderr).jobs
    jobs = parse_log(out.stdout + out.stderr).jobs
    seconds = {(j.rule, j.output): j.seconds for j in log.jobs}
    cpu = {(j.rule, j.output): j.bench.get("cpu_time", 0.0) for j in log.jobs}
    rerun_s = sum(seconds.get((j.rule, j.output), 0.0) for j in jobs)
    rerun_cpu = sum(cpu.get((j.rule, j.output), 0.0) for j in jobs)
    total_cpu = sum(cpu.values())
    unknown = [j.rule for j in jobs if (j.rule, j.output) not in seconds]
    total = sum(j.seconds for j in log.jobs if j.seconds == j.seconds)
    rules: dict[str, int] = {}
    for j in jobs:
        rules[j.rule] = rules.get(j.rule, 0) + 1
    return {"what": what, "jobs": len(jobs), "base_jobs": len(base_jobs), "rules": rules, "rerun_s": rerun_s,
            "total_s": total, "share": rerun_s / total if total else float("nan"), "unknown": unknown,
            "cpu_share": rerun_cpu / total_cpu if total_cpu else float("nan")}


def smoke_runs(params_file: str | Path, tmp: Path, budget: float | None = None) -> dict[str, Any]:
    """Cold run of the params file in a fresh copy, then the re-run after one budget change; wall times."""
    work = new_project(tmp / "smoke")
    params = yaml.safe_load(_params_file(params_file).read_text())
    rel = write_params(work, "bench_cold.yaml", params)
    _, t_cold = snakemake(work, "--cores", "2", "--configfile", rel, timeout=budget)
    cold_log = latest_complete_log(work)
    changed, what = budget_changed(params)
    rel2 = write_params(work, "bench_budget.yaml", changed)
    _, t_re = snakemake(work, "--cores", "2", "--configfile", rel2, timeout=budget)
    re_log = latest_complete_log(work, cold=False)
    return {"cold_s": t_cold, "rerun_s": t_re, "what": what, "cold_log": cold_log, "rerun_log": re_log,
            "name": params.get("name", Path(params_file).stem)}


def job_startup_cpu(repeats: int = 3) -> float:
    """CPU seconds of what every job pays before its work: a fresh Python importing torch, timm and the stitching
    code (as a rule's script does), median of a few (children's CPU time from os.times)."""
    import statistics

    out = []
    for _ in range(repeats):
        before = os.times()
        subprocess.run([sys.executable, "-c", "import torch, timm, dery.stitching, dery.stages._io"], cwd=ROOT,
                       check=True, capture_output=True)
        after = os.times()
        out.append(after.children_user + after.children_system - before.children_user - before.children_system)
    return statistics.median(out)


def _cpu(log: Log | None) -> float:
    return sum(j.bench.get("cpu_time", 0.0) for j in log.jobs) if log is not None else float("nan")


# --------------------------------------------------------------------------------------- the row

def run(quick: bool, params_file: str | Path = "params/smoke.yaml", smoke: bool = True, dry_run: bool = True,
        project: Path = ROOT) -> Result:
    """Row 6. ``smoke``: part (b) (minutes); ``dry_run``: the budget-change dry run of part (a) (seconds, copies the
    finished project's results); ``project``: where to read part (a) from (this checkout)."""
    res = Result()
    notes = ["### Row 6: whole pipeline"]
    log = latest_complete_log(project)
    if log is None:
        res.rows.append(Row("6", "whole pipeline, default config: no complete cold run in this checkout "
                            "(`snakemake --cores all` writes one)", "-", f"< {DEFAULT_TARGET_S // 60} min", "-",
                            f"< {DEFAULT_TARGET_S // 60} min", "not measured"))
    else:
        cfg = _first_configfile(log.configfiles) if log.configfiles else "?"
        cpu_total = sum(j.bench.get("cpu_time", 0.0) for j in log.jobs)
        wall_total = sum(j.seconds for j in log.jobs if j.bench and j.seconds == j.seconds)
        res.rows.append(Row("6", f"whole pipeline, cold, `{cfg}` ({len(log.jobs)} jobs, 2 cores; log "
                            f"{log.path.name})", fmt_s(log.seconds), f"{DEFAULT_TARGET_S // 60} min",
                            f"{log.seconds / DEFAULT_TARGET_S:.2f}x the target",
                            f"< {DEFAULT_TARGET_S // 60} min", yes(log.seconds < DEFAULT_TARGET_S)))
        notes.append(f"**(a) The checkout's last complete cold run** (`{log.path.name}`, config {cfg}): "
                     f"{log.start:%H:%M:%S} to {log.end:%H:%M:%S} = {fmt_s(log.seconds)} wall, {len(log.jobs)} "
                     "jobs on 2 cores (wall seconds of jobs running side by side add up to more than the run's). "
                     "Times and memory from the rules' `benchmark:` files (max_rss: the job's peak resident "
                     "memory), the log's start/finish stamps for rules without one. The jobs' summed CPU time is "
                     f"{fmt_s(cpu_total)}: on 2 otherwise idle cores the run could not take less than "
                     f"{fmt_s(cpu_total / 2)}; the jobs got {cpu_total / max(wall_total, 1e-9):.0%} of a core on "
                     "average while they ran (the rest went to other work on the machine, and to waiting).\n\n"
                     + rule_table(log.jobs))
        with tempfile.TemporaryDirectory(prefix="dery-bench-dry-") as tmp:
            try:
                if not dry_run:
                    raise RuntimeError("not asked for (dry_run=False)")
                dry = dry_run_rerun(project, _first_configfile(log.configfiles), Path(tmp))
            except Exception as exc:  # a dry run that cannot run is reported, not fatal
                dry = None
                notes.append(f"Dry run of a budget change failed: {type(exc).__name__}: {str(exc)[:300]}")
        if dry is not None:
            res.rows.append(Row("6", f"... a budget change ({dry['what']}) re-runs {dry['jobs']} of "
                                f"{len(log.jobs)} jobs (dry run on a copy of the finished run)",
                                f"{fmt_s(dry['rerun_s'])} of job time", f"{fmt_s(dry['total_s'])} job time of "
                                "the full run", f"{dry['share']:.1%} of job wall time, {dry['cpu_share']:.1%} of "
                                "job CPU time", f"< {RERUN_TARGET:.0%}",
                                yes(dry["share"] < RERUN_TARGET) + " (estimate from the run's job times)"))
            notes.append(f"A budget change in the default ({dry['what']}), dry run in a copy of the finished project: "
                         f"re-runs {', '.join(f'{r} x{n}' for r, n in dry['rules'].items())}; the same params "
                         f"unchanged re-run {dry['base_jobs']} jobs. Their share of the run's summed job wall "
                         f"seconds is the estimate (both run 2 jobs at a time); of its summed job CPU seconds, "
                         f"{dry['cpu_share']:.1%}."
                         + (f" Jobs not in the run's log: {', '.join(dry['unknown'])}." if dry["unknown"] else ""))
    if smoke:
        with tempfile.TemporaryDirectory(prefix="dery-bench-smoke-") as tmp:
            s = smoke_runs(params_file, Path(tmp))
        ratio = s["rerun_s"] / s["cold_s"]
        n_re = len(s["rerun_log"].jobs) if s["rerun_log"] else 0
        res.rows.append(Row("6", f"... `{s['name']}` config cold in a fresh copy (`--cores 2`)", fmt_s(s["cold_s"]),
                            f"{SMOKE_TARGET_S // 60} min", f"{s['cold_s'] / SMOKE_TARGET_S:.2f}x the target",
                            f"< {SMOKE_TARGET_S // 60} min", yes(s["cold_s"] < SMOKE_TARGET_S)))
        cpu_ratio = _cpu(s["rerun_log"]) / _cpu(s["cold_log"])
        res.rows.append(Row("6", f"... `{s['name']}` re-run after a budget change ({s['what']}; {n_re} jobs)",
                            fmt_s(s["rerun_s"]), f"{fmt_s(s['cold_s'])} cold", f"{ratio:.1%} (job CPU time: "
                            f"{cpu_ratio:.1%})", f"< {RERUN_TARGET:.0%}", yes(ratio < RERUN_TARGET)))
        start = job_startup_cpu()
        n_cold = len([j for j in s["cold_log"].jobs if j.rule != "all"]) if s["cold_log"] else 0
        n_rerun = len([j for j in s["rerun_log"].jobs if j.rule != "all"]) if s["rerun_log"] else 0
        if s["cold_log"] is not None:
            notes.append(f"**(b) `{s['name']}` cold** in a fresh copy of the project: {fmt_s(s['cold_s'])} for the "
                         f"`snakemake` command (start-up and DAG included), {len(s['cold_log'].jobs)} jobs.\n\n"
                         + rule_table(s["cold_log"].jobs, top=3))
        if s["rerun_log"] is not None:
            notes.append(f"Re-run after {s['what']}: {fmt_s(s['rerun_s'])}, "
                         + ", ".join(f"{r['rule']} x{r['jobs']} {r['s']:.0f} s" for r in per_rule(s["rerun_log"].jobs))
                         + ". Snakemake's start-up and DAG building (a few seconds, more under load) are a fixed part "
                         "of every re-run.")
        notes.append(f"What limits the smoke config: each job is a fresh Python that imports torch and timm before "
                     f"any work, {fmt_s(start)} of CPU here (measured now, under the same load); x {n_cold} jobs = "
                     f"{fmt_s(start * n_cold)}, and x {n_rerun} = {fmt_s(start * n_rerun)} for the re-run: of the "
                     f"order of the jobs' whole CPU time as their benchmark files count it "
                     f"({fmt_s(_cpu(s['cold_log']))} "
                     f"and {fmt_s(_cpu(s['rerun_log']))}; Snakemake samples it, so short jobs are undercounted). The "
                     "work itself is seconds; the re-run repeats the whole tail of summary, tracking and registry "
                     "jobs, each paying the same start-up. The jobs' wall time exceeds their CPU time by the share of "
                     "the 2 cores that other work took.")
    else:
        res.rows.append(Row("6", "... smoke config cold + budget re-run: skipped (pass smoke=True)", "-", "-", "-",
                            f"< {SMOKE_TARGET_S // 60} min; < {RERUN_TARGET:.0%}", "not measured"))
    notes.append("Wall-clock times (Snakemake measures wall time) on a machine shared with other jobs: pessimistic.")
    res.notes.append("\n\n".join(notes))
    return res
