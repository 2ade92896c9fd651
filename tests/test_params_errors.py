"""Bad params are caught before any job runs: exit non-zero, one plain message naming the key (or the file) and
the fix, no traceback, bounded time and memory, earlier results untouched.

Three tables: values in a params file (through `snakemake --configfile`), the file itself (through `dery run`,
and through Snakemake where Snakemake can load it), and overrides on the command line. The cases run
concurrently in one fixture (each is a separate Snakemake process that stops while parsing); every case is
then its own test."""
import os
import pickle
import resource
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 6 << 30  # address space per case: torch alone maps ~3.6 GB; a YAML alias bomb would need far more
TIME_LIMIT_S = 120


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("bad-params")
    for item in ("Snakefile", "workflow", "profiles", "params", "dery"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    (work / "results").mkdir()
    (work / "results" / "earlier.txt").write_text("an earlier result")
    weights = work / "resources" / "weights"
    weights.mkdir(parents=True)
    import timm

    torch.save(timm.create_model("resnet10t", num_classes=5).state_dict(), weights / "resnet10t.pth")
    (weights / "garbage.pth").write_bytes(b"this is not a checkpoint")

    class Payload:
        def __reduce__(self):
            return (print, ("code ran while loading a checkpoint",))

    (weights / "payload.pth").write_bytes(pickle.dumps({"state_dict": Payload()}))
    (work / "resources" / "empty").mkdir()
    return work


def smoke():
    return yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())


def zoo_entry(i, **change):
    def edit(c):
        c["zoo"][i].update(change)
    return edit


def set_key(path, value):
    def edit(c):
        node = c
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return edit


CASES = {
    "misspelt key": (lambda c: c.update(partiton=c.pop("partition")), "did you mean `partition`"),
    "K not a number": (set_key(["partition", "K"], "three"), "partition.K"),
    "K below 2": (set_key(["partition", "K"], 1), "partition.K"),
    "negative eps": (set_key(["partition", "eps"], -0.1), "partition.eps"),
    "unknown architecture": (zoo_entry(0, arch="resnet99"), "Did you mean"),
    "bad timm kwargs": (zoo_entry(2, kwargs={"depht": 3}), "Fix its `kwargs`"),
    "duplicate model id": (zoo_entry(1, id="resnet10t_A"), "unique `id`"),
    "undefined source": (zoo_entry(0, source="C"), "not defined under `sources`"),
    "missing weights file": (zoo_entry(0, weights="resources/weights/nope.pth"), "does not exist"),
    "unreadable weights file": (zoo_entry(0, weights="resources/weights/garbage.pth"), "cannot be loaded safely"),
    "weights of another architecture": (zoo_entry(1, weights="resources/weights/resnet10t.pth"), "does not fit"),
    "weights carrying code": (zoo_entry(0, weights="resources/weights/payload.pth"), "without executing code"),
    "missing data folder": (set_key(["data", "root"], "resources/nowhere"), "Fashion-MNIST not found"),
    "data folder without idx files": (set_key(["data", "root"], "resources/empty"), "Fashion-MNIST not found"),
    "K deeper than the shallowest model": (set_key(["partition", "K"], 5), "lower K to at most 3"),
    "probe larger than the split": (set_key(["features", "probe_images"], 400), "probe_images"),
    "target splits beyond the pool": (set_key(["target"], {"train_images": 15000, "val_images": 6000}), "target pool"),
    "source classes out of range": (set_key(["sources", "B"], [5, 12]), "sources.B"),
    "source with too few images": (set_key(["zoo_training", "images_per_source"], 30000), "fewer than"),
    "duplicate budget names": (lambda c: c["reassembly"]["budgets"].append(dict(c["reassembly"]["budgets"][0])),
                               "unique `name`"),
    "zero budget": (lambda c: c["reassembly"]["budgets"][0].update(params_m=0), "params_m"),
    "unknown protocol": (set_key(["finetune", "protocols"], ["XX"]), "finetune.protocols"),
    "download outside the project": (set_key(["data", "download_dir"], "/tmp/elsewhere"), "outside the project"),
    "MLflow store outside the project": (set_key(["tracking"], {"uri": "sqlite:////tmp/x.db"}), "outside the project"),
    "top_k above max_candidates": (set_key(["finetune", "top_k"], 50), "max_candidates"),
    "experiment name with a space": (set_key(["name"], "my run"), "`name`"),
    "unknown stem mode": (set_key(["reassembly", "stem"], "borrowed"), "reassembly.stem"),
    "NaN budget": (lambda c: c["reassembly"]["budgets"][0].update(params_m=float("nan")),
                   "`reassembly.budgets.0.params_m` is nan"),
    "infinite learning rate": (set_key(["finetune", "lr"], float("inf")), "`finetune.lr` is inf"),
    "NaN inside a model's kwargs": (zoo_entry(2, kwargs={"img_size": 32, "drop_rate": float("nan")}),
                                    "`zoo.2.kwargs.drop_rate` is nan"),
    "empty zoo mapping (no default zoo behind it)": (set_key(["zoo"], {}), "`zoo`"),
    "no zoo at all (not merged onto params/default.yaml)": (lambda c: c.pop("zoo"), "'zoo' is a required property"),
    "a transition rule mixing family and layout": (set_key(["reassembly", "forbid"], [["transformer", "maps"]]),
                                                    "mixes a model family with a tensor layout"),
    # values a schema type lets through but that have no meaning (found here, not by a crashing job)
    "learning rate above 1": (set_key(["finetune", "lr"], 5.0), "`finetune.lr`: 5.0 is out of range; it must be <= 1"),
    "weight decay above 1": (set_key(["zoo_training", "weight_decay"], 3), "`zoo_training.weight_decay`"),
    "warm-up longer than training": (lambda c: c["finetune"].update(warmup_epochs=4, epochs=1), "never reach"),
    "proxy batches beyond the split": (set_key(["proxy", "batches"], 40), "`proxy.batches` x `proxy.batch_size`"),
    "negative seed": (set_key(["seed"], -1), "`seed`: -1 is out of range; it must be >= 0"),
    "minus infinity as a budget": (lambda c: c["reassembly"]["budgets"][0].update(params_m=float("-inf")),
                                   "`reassembly.budgets.0.params_m` is -inf"),
    # structure and types
    "a one-model zoo": (lambda c: c.update(zoo=c["zoo"][:1]), "`zoo`: has 1 item; it needs at least 2"),
    "zoo given as a string": (set_key(["zoo"], "resnet18"), "`zoo`: 'resnet18' is not of type array"),
    "budgets given as a mapping": (set_key(["reassembly", "budgets"], {"name": "tiny"}), "`reassembly.budgets`"),
    "true where K is expected": (set_key(["partition", "K"], True), "`partition.K`: True is not of type integer"),
    "a budget with units": (lambda c: c["reassembly"]["budgets"][0].update(params_m="5M"), "params_m"),
    "a number in quotes": (set_key(["partition", "K"], "2"), "'2' is text, not integer"),
    "a dotted key at the top level": (lambda c: c.update({"partition.K": 2}), "nest it, `partition: {K: ...}`"),
    "a 100 kB string in a typed field": (set_key(["seed"], "7" * 100_000), "`seed`"),
    # models that cannot run at the size every stage feeds them
    "a ViT built for 224 px": (zoo_entry(2, kwargs={}), "cannot run on the 32x32 images"),
    "a Swin built for 224 px": (zoo_entry(2, arch="swin_tiny_patch4_window7_224", kwargs={}),
                                "cannot run on the 32x32 images"),
    # stores and servers
    "MLflow folder store": (set_key(["tracking"], {"uri": "file:./mlruns"}), "which MLflow 3 refuses"),
    "a bare folder as the store": (set_key(["tracking"], {"uri": "results/mlruns"}), "which MLflow 3 refuses"),
    "a tracking server that does not answer": (set_key(["tracking"], {"uri": "http://127.0.0.1:9"}),
                                               "`tracking.uri`: the MLflow server at http://127.0.0.1:9 did not "
                                               "answer"),
}


def bomb(levels: int = 8) -> str:
    """YAML anchors nine deep: 'billion laughs' (9**8 = 43 million strings from ten short lines)."""
    lines = ['  l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "anchors:\n" + "\n".join(lines) + "\n"


def smoke_text() -> str:
    return (ROOT / "params" / "smoke.yaml").read_text()


# (file content, what the message says); `direct`: Snakemake can load the file, so the workflow itself must refuse it
FILE_CASES = {
    "missing file": (None, "does not exist", False),
    "a folder instead of a file": ("folder", "is a folder, not a file", False),
    "not UTF-8": (smoke_text().replace("name: smoke", "name: sm\xf6ke").encode("latin-1"), "is not UTF-8 text", False),
    "empty file": (b"", "is empty", False),
    "larger than a params file can be": (smoke_text().encode() + b"# padding\n" * 40_000,
                                         "KB, and a params file is a few KB", True),
    "alias bomb in a typed field": ((bomb() + smoke_text().replace("name: smoke", "name: *l7")).encode(),
                                    "expands to more than 20,000 values", True),
    "alias bomb in a model's kwargs": ((bomb() + smoke_text().replace("depth: 3,", "depth: 3, extra: *l7,")).encode(),
                                       "expands to more than 20,000 values", True),
    "a key given twice": ((smoke_text() + "partition: {K: 3}\n").encode(), "the key `partition` is given twice", True),
    "a Python tag": (smoke_text().replace("seed: 0", "seed: !!python/object/apply:os.getpid []").encode(),
                     "uses the tag !!python/object/apply:os.getpid", False),
    "tab indentation": (smoke_text().replace("  - {id: resnet10t_A", "\t- {id: resnet10t_A").encode(),
                        "indent with spaces, not tabs", False),
    "a list at the top level": (b"- resnet18\n- vit_tiny\n", "its top level is list", False),
    "two YAML documents": ((smoke_text() + "---\nseed: 1\n").encode(), "holds 2 YAML documents", False),
    "unreadable file": ("unreadable", "permission denied", False),
}


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run(project, args, env=None):
    proc = subprocess.run([sys.executable, *args], cwd=project, capture_output=True, text=True, timeout=TIME_LIMIT_S,
                          preexec_fn=limited, env={**os.environ, "PYTHONPATH": str(project), **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr


def snakemake(*args):
    return ["-m", "snakemake", "--cores", "1", *args]


def dery_run(*args):
    return ["-m", "dery.cli", "run", *args]


def write_case(project, name, content) -> str:
    path = project / "params" / f"case-{abs(hash(name)) % 10**8}.yaml"
    if content == "folder":
        path.mkdir()
    elif content == "unreadable":
        path.write_text(smoke_text())
        path.chmod(0)
    elif content is not None:
        path.write_bytes(content)
    return str(path.relative_to(project))


@pytest.fixture(scope="module")
def outcomes(project):
    """Every case's (exit code, output), run concurrently."""
    jobs = {}
    for name, (edit, _) in CASES.items():
        cfg = yaml.safe_load(smoke_text())
        edit(cfg)
        path = project / "params" / f"value-{abs(hash(name)) % 10**8}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        jobs[("value", name)] = (snakemake("--configfile", str(path.relative_to(project))), None)
    for name, (content, _, direct) in FILE_CASES.items():
        path = write_case(project, name, content)
        jobs[("file", name)] = (dery_run(path, "-n"), None)
        if direct:
            jobs[("direct", name)] = (snakemake("--configfile", path), None)
    for name, (args, env, _) in OVERRIDES.items():
        jobs[("override", name)] = (args, env)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {key: pool.submit(run, project, args, env) for key, (args, env) in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


OVERRIDES = {
    "a dotted --config key": (dery_run("params/smoke.yaml", "-n", "--config", "partition.K=4"), None,
                              "Snakemake's --config takes top-level KEY=VALUE pairs"),
    "a nested --config value": (snakemake("--config", "partition={K: 4}", "--configfile", "params/smoke.yaml"), None,
                                "'4' is text, not integer"),
    "an empty zoo from --config": (snakemake("--config", "zoo=[]", "--configfile", "params/smoke.yaml"), None,
                                   "`zoo`: has 0 items; it needs at least 2"),
    "a tracking server in the environment that does not answer": (
        snakemake("--configfile", "params/smoke.yaml"), {"DERY_TRACKING_URI": "http://127.0.0.1:9"},
        "$DERY_TRACKING_URI: the MLflow server at http://127.0.0.1:9 did not answer"),
}


def assert_stopped_cleanly(project, code, out, expected):
    assert code != 0, out
    assert expected in out, out
    assert "Traceback" not in out and 'File "' not in out, out
    assert "Building DAG of jobs" not in out, "no job may start"
    assert len(out) < 5000, f"the message must be bounded, got {len(out)} characters"
    assert (project / "results" / "earlier.txt").read_text() == "an earlier result"
    assert sorted(p.name for p in (project / "results").iterdir()) == ["earlier.txt"], "no job ran"


@pytest.mark.parametrize("case", CASES)
def test_bad_values_stop_before_any_job_with_a_plain_message(project, outcomes, case):
    code, out = outcomes[("value", case)]
    assert_stopped_cleanly(project, code, out, CASES[case][1])
    assert "dery: the params file has" in out


@pytest.mark.parametrize("case", FILE_CASES)
def test_a_bad_params_file_stops_dery_run_with_a_plain_message_naming_it(project, outcomes, case):
    if case == "unreadable file" and os.geteuid() == 0:
        pytest.skip("root reads a file without read permission")
    code, out = outcomes[("file", case)]
    assert_stopped_cleanly(project, code, out, FILE_CASES[case][1])
    assert "dery run: the params file params/case-" in out and "cannot be used" in out


@pytest.mark.parametrize("case", [c for c, (_, _, direct) in FILE_CASES.items() if direct])
def test_a_bad_params_file_that_snakemake_loads_is_refused_by_the_workflow(project, outcomes, case):
    code, out = outcomes[("direct", case)]
    assert_stopped_cleanly(project, code, out, FILE_CASES[case][1])


@pytest.mark.parametrize("case", OVERRIDES)
def test_bad_overrides_stop_before_any_job_with_a_plain_message(project, outcomes, case):
    code, out = outcomes[("override", case)]
    assert_stopped_cleanly(project, code, out, OVERRIDES[case][2])


def test_an_infinite_budget_means_no_limit_and_the_run_names_its_params_file(project):
    cfg = smoke()
    cfg["reassembly"]["budgets"][0].update(params_m=float("inf"), macs_m=float("inf"))
    (project / "params" / "nolimit.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile",
                           "params/nolimit.yaml"], cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dery: params file params/nolimit.yaml (`smoke`" in proc.stderr
