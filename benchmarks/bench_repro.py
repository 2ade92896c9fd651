"""Row 8: what strict reproducibility costs, and what it buys. The same job (train a zoo model for some steps,
extract features, one CKA matrix) runs in a fresh process per setting: native kernels, native kernels on an
emulated AVX2-only CPU (the caps of ``tests/test_reproducibility.AVX2_MACHINE``), and strict mode on both. Time is
the child's CPU time; identity is a hash of the trained weights, the features and the CKA."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from .common import ROOT, Result, Row

JOB = r"""
import hashlib, json, time, numpy as np, torch, timm
from dery import repro, similarity as S
threads = repro.check_job(1)
torch.manual_seed(0)
steps, n = (8, 64) if QUICK else (40, 128)
m = timm.create_model("resnet18", num_classes=10)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(0)
x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
t0 = time.process_time()
for _ in range(steps):
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
t_train = time.process_time() - t0
t0 = time.process_time()
with torch.inference_mode():
    f = m.eval().forward_features(torch.randn(4 * n, 3, 32, 32, generator=g)).mean((2, 3)).double().numpy()
t_feat = time.process_time() - t0
t0 = time.process_time()
cka = S.linear_cka_matrix([f[:, :256], f[:, 256:]], [f[:, ::2], f[:, 1::2]])
t_cka = time.process_time() - t0
h = lambda b: hashlib.sha256(b).hexdigest()[:12]
w = b"".join(t.detach().contiguous().numpy().tobytes() for t in m.state_dict().values())
print(json.dumps({"train": t_train, "features": t_feat, "cka": t_cka, "weights": h(w), "feats": h(f.tobytes()),
                  "cka_hash": h(np.ascontiguousarray(cka).tobytes()), "cap": torch.backends.cpu.get_cpu_capability()}))
"""


def _child(outer: dict[str, str], mode: str | None, quick: bool) -> dict[str, Any]:
    from dery import repro

    env = {k: v for k, v in os.environ.items() if k not in (*outer, repro.ENV_KEY, "NPY_DISABLE_CPU_FEATURES")}
    env.update(outer)
    if mode:
        env.update(repro.environment({"mode": mode, "isa": "avx2", "threads": 1}))
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", f"QUICK = {quick}\n" + JOB], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool, params: dict[str, Any], tiny: bool = False) -> Result:
    from dery import repro

    avx2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
            "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": repro._numpy_disable()}
    runs = {(machine, mode): _child(outer, mode, quick or tiny)
            for machine, outer in (("this CPU", {}), ("emulated AVX2 CPU", avx2))
            for mode in ("native", "strict")}
    nat, nat2 = runs[("this CPU", "native")], runs[("emulated AVX2 CPU", "native")]
    st, st2 = runs[("this CPU", "strict")], runs[("emulated AVX2 CPU", "strict")]
    same = lambda a, b: ", ".join(k for k in ("weights", "feats", "cka_hash") if a[k] == b[k]) or "none"  # noqa: E731
    res = Result()
    for stage in ("train", "features", "cka"):
        ratio = st[stage] / max(nat[stage], 1e-9)
        res.rows.append(Row("8", f"strict mode cost: {stage} (resnet18, 32 px, 1 thread)", f"{st[stage]:.2f} s",
                            f"{nat[stage]:.2f} s native ({nat['cap']} kernels)", f"{ratio:.2f}x", "reported", "-"))
    res.rows.append(Row("8", "identical across CPUs with/without AVX-512: native kernels", same(nat, nat2),
                        f"{nat['cap']} vs {nat2['cap']} kernels", "-", "reported", "-"))
    res.rows.append(Row("8", "... strict mode (AVX2 caps, 1 thread, deterministic algorithms)", same(st, st2),
                        "weights, feats, cka_hash", "-", "all three", "yes" if same(st, st2).count(",") == 2 else
                        "**no**"))
    res.notes.append("Row 8: the CPUs compared are this machine and the same machine with every library capped at "
                     "AVX2 (what a CPU without AVX-512 dispatches); a real second CPU was not available.")
    return res
