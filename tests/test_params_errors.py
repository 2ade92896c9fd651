"""Bad params are caught before any job runs: exit non-zero, one plain message, no traceback,
earlier results untouched."""
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("bad-params")
    for item in ("Snakefile", "workflow", "params", "dery"):
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
}


@pytest.mark.parametrize("case", CASES)
def test_bad_params_stop_before_any_job_with_a_plain_message(project, case):
    edit, expected = CASES[case]
    cfg = smoke()
    edit(cfg)
    path = project / "params" / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "params/bad.yaml"],
                          cwd=project, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert expected in out, out
    assert "Traceback" not in out and 'File "' not in out, out
    assert "dery: the params file has" in out
    assert (project / "results" / "earlier.txt").read_text() == "an earlier result"
    assert sorted(p.name for p in (project / "results").iterdir()) == ["earlier.txt"], "no job ran"


def test_an_infinite_budget_means_no_limit_and_the_run_names_its_params_file(project):
    cfg = smoke()
    cfg["reassembly"]["budgets"][0].update(params_m=float("inf"), macs_m=float("inf"))
    (project / "params" / "nolimit.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile",
                           "params/nolimit.yaml"], cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dery: params file params/nolimit.yaml (`smoke`" in proc.stderr
