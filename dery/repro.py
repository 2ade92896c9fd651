"""Same params, same bits on another x86 CPU: the `reproducibility` params and how every job applies them.

PyTorch's CPU kernels dispatch on the instruction set: ATen's vectorised kernels (AVX2 vs AVX-512),
oneDNN's convolutions and MKL's BLAS each pick code paths, and so summation orders, by what the CPU
offers. Five AdamW steps already give other weights under each of `ATEN_CPU_CAPABILITY`,
`ONEDNN_MAX_CPU_ISA` and `MKL_CBWR` changed alone, so a zoo pretrained on an AVX-512 machine is not
the zoo of an AVX2 machine, and every discrete choice downstream (sets, candidates, ranks) can flip.

``mode: strict`` caps every library at one instruction set that both kinds of machine have (AVX2),
fixes the thread count (reductions split over threads add in another order) and turns on PyTorch's
deterministic algorithms. These are environment variables the libraries read once, when they load,
so they must be in the environment *before* a job imports torch or numpy: the Snakefile sets them at
parse time (every job, local or on a cluster node that re-parses the Snakefile, inherits them, and so
do torchrun's DDP children), and :func:`check_job` verifies inside each job that they took effect.
``mode: native`` leaves the machine's best kernels (faster, not portable). The fingerprint
(:mod:`dery.fingerprint`) records what was in force, so two runs can be compared.
"""
from __future__ import annotations

import json
import os
import platform
from typing import Any

ENV_KEY = "DERY_REPRO"  # the settings as JSON, for the jobs' own check
ISA_ENV = {  # the cap of each library, per target instruction set
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"},
}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# numpy's own dispatched kernels above AVX2 (its AVX-512 loops, e.g. SVML's exp/log, round differently)
_NUMPY_ABOVE_AVX2 = ("AVX512F", "AVX512CD", "AVX512_KNL", "AVX512_KNM", "AVX512_SKX", "AVX512_CLX", "AVX512_CNL",
                     "AVX512_ICL", "AVX512_SPR", "AVX512FP16", "AVX512VNNI", "AVX512BW", "AVX512DQ", "AVX512VL",
                     "X86_V4")


class ReproError(RuntimeError):
    pass


def settings(config: dict[str, Any]) -> dict[str, Any]:
    r = config.get("reproducibility") or {}
    return {"mode": r.get("mode", "strict"), "isa": r.get("isa", "avx2"), "threads": int(r.get("threads", 1))}


def _numpy_disable() -> str:
    """numpy's dispatched targets above AVX2, whether or not this CPU has them: computed from what the build
    dispatches, not from what this process sees (an outer NPY_DISABLE_CPU_FEATURES would hide them)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return " ".join(f for f in __cpu_dispatch__ if f in _NUMPY_ABOVE_AVX2)


def environment(s: dict[str, Any]) -> dict[str, str]:
    """The variables a job must start with under settings ``s`` (empty for native, except the record)."""
    env = {ENV_KEY: json.dumps(s, sort_keys=True)}
    if s["mode"] != "strict":
        return env
    env.update(ISA_ENV[s["isa"]])
    env.update({v: str(s["threads"]) for v in THREAD_VARS})
    env["NPY_DISABLE_CPU_FEATURES"] = _numpy_disable()
    # numpy's OpenBLAS picks its kernels by CPU too; some machines of this kind set OPENBLAS_CORETYPE for
    # correctness: keep theirs, else take the AVX2 (Haswell) kernels
    env["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE", "Haswell")
    env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # deterministic cuBLAS, should a job run on a GPU
    return env


def apply(config: dict[str, Any]) -> dict[str, str]:
    """Put the environment of ``config``'s settings into this process (the Snakefile calls it at parse time)."""
    env = environment(settings(config))
    os.environ.update(env)
    return env


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def in_force() -> dict[str, Any]:
    """What this process actually runs with: the kernels each library dispatches to, threads, versions."""
    import numpy as np
    import torch

    flags = cpu_flags()
    return {"requested": json.loads(os.environ.get(ENV_KEY, "null") or "null"),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "env": {k: os.environ.get(k) for k in (*ISA_ENV["avx2"], *THREAD_VARS, "NPY_DISABLE_CPU_FEATURES",
                                                   "OPENBLAS_CORETYPE")},
            "cpu_model": cpu_model(), "cpu_avx512f": "avx512f" in flags, "cpu_avx2": "avx2" in flags,
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}


def check_job(threads: int) -> int:
    """Inside a job: apply what can be applied late (threads, deterministic algorithms) and verify what cannot.

    Returns the thread count to use. Strict mode pins it to the params' value whatever the rule's
    ``threads:`` (so another core count gives the same bits); native mode uses the rule's.
    """
    import torch

    raw = os.environ.get(ENV_KEY)
    s = json.loads(raw) if raw else None
    if not s or s["mode"] != "strict":
        torch.set_num_threads(max(1, threads))
        return max(1, threads)
    torch.set_num_threads(s["threads"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    cap = torch.backends.cpu.get_cpu_capability()
    if cap.lower() not in (s["isa"], "default") or os.environ.get("ATEN_CPU_CAPABILITY") != ISA_ENV[s["isa"]][
            "ATEN_CPU_CAPABILITY"]:
        raise ReproError(f"reproducibility.mode is strict ({s['isa']}) but torch dispatches {cap} kernels in this job: "
                         "the environment was set after torch loaded. Run the stage through snakemake (the Snakefile "
                         "sets it), or export the variables of `dery repro-env` before starting Python.")
    return s["threads"]
