"""Benchmarks for dery: each pipeline stage against its natural limit and against the naive way.

    python benchmarks/run.py [--rows 1,2,...] [--quick] [--params params/default.yaml] [--out table.md]

Prints one Markdown table (row, what, dery, baseline/limit, ratio, target, met?) and the details of
each row below it. Ratios are measured side by side in one run (variants interleaved, medians of
repeats), so load from other work on the machine hits both sides alike; absolute times depend on it.
Rows: 1 features, 2 similarity, 3 partition, 4 reassembly ILP, 5 proxy, 6 whole pipeline
(Snakemake, in a temporary copy of the project), 7 training throughput, 8 strict reproducibility (cost, identity).
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Result, Row  # noqa: E402

ROWS = {1: "bench_features", 2: "bench_similarity", 3: "bench_partition", 4: "bench_reassembly",
        5: "bench_proxy", 6: "bench_pipeline", 7: "bench_training", 8: "bench_repro"}


def table(rows: list[Row]) -> str:
    lines = ["| row | what | dery | baseline / limit | ratio | target | met? |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.row} | {r.what} | {r.dery} | {r.baseline} | {r.ratio} | {r.target} | {r.met} |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"{gpu}, Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(map(str, ROWS)), help="comma-separated row numbers (default: all)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (minutes, not tens)")
    ap.add_argument("--params", default=None, help="params file: the zoo for rows 1, 2, 5, 7 and the workflow "
                                                   "of row 6 (default: params/default.yaml; row 6: params/smoke.yaml)")
    ap.add_argument("--out", default=None, help="also write the Markdown to this file")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as every Snakemake rule)")
    args = ap.parse_args(argv)
    import torch

    from benchmarks.common import load_params

    torch.set_num_threads(args.threads)
    wanted = [int(r) for r in args.rows.split(",") if r.strip()]
    params = load_params(args.params or "params/default.yaml")
    rows, notes = [], []
    t0 = time.perf_counter()
    for r in wanted:
        mod = importlib.import_module(f"benchmarks.{ROWS[r]}")
        t = time.perf_counter()
        res: Result = mod.run(args.quick, params) if r != 6 else mod.run(args.quick, args.params or "params/smoke.yaml")
        print(f"[row {r} done in {time.perf_counter() - t:.0f} s]", file=sys.stderr, flush=True)
        rows += res.rows
        notes += res.notes
    md = "\n\n".join([f"Machine: {machine()}. Mode: {'quick' if args.quick else 'full'}; "
                      f"total {time.perf_counter() - t0:.0f} s.", table(rows)] + notes) + "\n"
    print(md)
    if args.out:
        Path(args.out).write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
