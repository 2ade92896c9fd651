"""Same params, same numbers: per-candidate seeds, the strict mode across instruction sets, fingerprints.

A machine without AVX-512 is emulated here by the caps the libraries honour (ATen, oneDNN, MKL, numpy,
OpenBLAS); `AVX2_MACHINE` is that environment. Strict mode must make a job's numbers independent of it.
"""
import json
import os
import subprocess
import sys

import pytest

from dery import fingerprint as FP
from dery import repro
from dery.stages._io import spec_seed

AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": repro._numpy_disable(),
                "OMP_NUM_THREADS": "2"}
HAS_AVX512 = "avx512f" in repro.cpu_flags()

# Five AdamW steps of a small ResNet: the measurement that showed each library cap changes the weights.
FIVE_ADAMW_STEPS = """
import hashlib, torch, timm
from dery import repro
repro.check_job(2)
torch.manual_seed(0)
m = timm.create_model("resnet10t", num_classes=10)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
for _ in range(5):
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
h = hashlib.sha256()
for t in m.state_dict().values():
    h.update(t.detach().contiguous().numpy().tobytes())
print(h.hexdigest(), torch.backends.cpu.get_cpu_capability())
"""


def run_job(outer: dict, mode: str | None) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*AVX2_MACHINE, repro.ENV_KEY, "NPY_DISABLE_CPU_FEATURES")}
    env.update(outer)
    if mode:
        env.update(repro.environment({"mode": mode, "isa": "avx2", "threads": 1}))
    out = subprocess.run([sys.executable, "-c", FIVE_ADAMW_STEPS], env=env, capture_output=True, text=True, check=True)
    digest, cap = out.stdout.split()
    return digest, cap


# ------------------------------------------------------------------------------ seeds

def test_every_candidate_of_a_budget_gets_its_own_seed():
    ids = ["large-c018", "large-c025", "large-cuts0", "large-randcover2"]  # shared one seed before (first 4 bytes)
    seeds = {spec_seed(0, i) for i in ids}
    assert len(seeds) == len(ids)
    assert len({spec_seed(0, f"small-c{i:03d}") for i in range(500)}) == 500
    assert spec_seed(0, "small-c001") != spec_seed(1, "small-c001"), "the base seed moves every candidate's seed"


def test_a_candidate_seed_is_the_same_in_another_process():
    code = "from dery.stages._io import spec_seed; print(spec_seed(3, 'small-c042'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert int(other.stdout) == spec_seed(3, "small-c042") and 0 <= spec_seed(3, "small-c042") < 2**31


# ------------------------------------------------------------------------------ strict mode

@pytest.mark.skipif(not HAS_AVX512, reason="needs an AVX-512 CPU to show that the caps change the numbers")
def test_native_kernels_give_other_weights_on_an_avx2_machine():
    native, cap = run_job({}, None)
    emulated, cap2 = run_job(AVX2_MACHINE, None)
    assert cap == "AVX512" and cap2 == "AVX2"
    assert native != emulated, "if this fails, the caps no longer change torch's numbers: revisit strict mode"


def test_strict_mode_gives_the_same_weights_with_and_without_avx512():
    native, cap = run_job({}, "strict")
    emulated, cap2 = run_job(AVX2_MACHINE, "strict")
    assert cap == cap2 == "AVX2"
    assert native == emulated


def test_strict_environment_caps_every_library_at_avx2_and_pins_threads():
    env = repro.environment({"mode": "strict", "isa": "avx2", "threads": 3})
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["MKL_CBWR"].startswith("AVX2") and env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert json.loads(env[repro.ENV_KEY])["mode"] == "strict"
    assert set(repro.environment({"mode": "native", "isa": "avx2", "threads": 1})) == {repro.ENV_KEY}


def test_a_strict_job_started_without_the_caps_refuses_to_run():
    code = ("import os, json, torch; torch.backends.cpu.get_cpu_capability();"
            f"os.environ['{repro.ENV_KEY}'] = json.dumps({{'mode': 'strict', 'isa': 'avx2', 'threads': 1}});"
            "from dery import repro; repro.check_job(1)")
    env = {k: v for k, v in os.environ.items() if k not in (*AVX2_MACHINE, repro.ENV_KEY)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if HAS_AVX512:
        assert out.returncode != 0 and "strict" in out.stderr and "snakemake" in out.stderr
    else:  # an AVX2 machine dispatches AVX2 kernels anyway, but the variables are still missing
        assert out.returncode != 0 and "repro-env" in out.stderr


# ------------------------------------------------------------------------------ fingerprints

def _run_dir(root, monkeypatch, weights_value: float) -> dict:
    """A run's stage files, named relative to its working directory as Snakemake names them."""
    import numpy as np
    from safetensors.numpy import save_file

    root.mkdir(parents=True)
    monkeypatch.chdir(root)
    os.makedirs("results/zoo")
    save_file({"w": np.full((2, 2), weights_value, np.float32)}, "results/zoo/m.safetensors")
    np.savez("results/sim.npz", cka=np.eye(3))
    # the seconds differ between any two runs: a wall-clock field is not a result
    with open("results/part.json", "w") as fh:
        json.dump({"sets": [[1, 2]], "seconds": 1.0 + weights_value * os.getpid()}, fh)
    return FP.fingerprint({"zoo": ["results/zoo/m.safetensors"], "similarity": ["results/sim.npz"],
                           "partition": ["results/part.json"]})


def test_fingerprints_name_the_first_stage_where_two_runs_differ(tmp_path, monkeypatch):
    a = _run_dir(tmp_path / "a", monkeypatch, 1.0)
    b = _run_dir(tmp_path / "b", monkeypatch, 1.0)
    c = _run_dir(tmp_path / "c", monkeypatch, 2.0)
    assert a["stages"] == b["stages"] and FP.compare(a, b)[0] is None
    first, lines = FP.compare(a, c)
    assert first == "zoo" and any(line.startswith("zoo") and "DIFFERS" in line for line in lines)
    assert any(line.startswith("similarity") and "same" in line for line in lines)
    assert {"cpu_model", "torch_cpu_capability", "torch", "numpy", "timm"} <= set(a["environment"])


def test_the_fingerprint_command_exits_non_zero_when_runs_differ(tmp_path, monkeypatch):
    from dery.cli import main

    for name, v in (("a", 1.0), ("b", 1.0), ("c", 3.0)):
        (tmp_path / f"{name}.json").write_text(json.dumps(_run_dir(tmp_path / name, monkeypatch, v)))
    assert main(["fingerprint", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert main(["fingerprint", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 3


# ------------------------------------------------------------------------------ the whole smoke run

@pytest.mark.slow
def test_the_smoke_run_on_an_emulated_avx2_machine_has_the_same_fingerprint(smoke_project, tmp_path):
    """Strict mode (the default) end to end: every Snakemake job inherits the caps, so a machine without
    AVX-512 (emulated by the outer caps, and another thread count) computes the same bits at every stage."""
    from conftest import new_project, project_env

    work = new_project(tmp_path / "avx2")
    env = {**project_env(work), **AVX2_MACHINE}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "results/fingerprint.json", "--cores", "2",
                           "--configfile", "params/smoke.yaml"], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    here = json.loads((smoke_project / "results" / "fingerprint.json").read_text())
    there = json.loads((work / "results" / "fingerprint.json").read_text())
    first, lines = FP.compare(here, there)
    assert first is None, "\n".join(lines)
    assert here["environment"]["torch_cpu_capability"] == there["environment"]["torch_cpu_capability"] == "AVX2"


# ------------------------------------------------------------------------------ exact versions

def test_the_lock_file_pins_every_dependency_within_pyproject_s_ranges():
    """scripts/setup.sh installs with `-c requirements.lock`: a clone next year gets the README's versions."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = Path(__file__).resolve().parents[1]
    pins = {}
    for line in (root / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in requirements.lock; regenerate it"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} violates {spec}"
    assert "-c requirements.lock" in (root / "scripts" / "setup.sh").read_text()
