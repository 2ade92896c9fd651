"""Fine-tuned assemblies as artifacts: rebuilt from spec + safetensors alone, exported, registered in MLflow."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import dery
from dery import artifacts as A
from dery import data as D
from dery import export as X
from dery import stitching as ST

# TorchScript is deprecated upstream yet is the exporter that follows OwnStem (see dery.artifacts)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
VIT = dict(img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2)
ZOO = {"cnn": ("resnet10t", {}, "Apache-2.0 (test)"), "vit": ("vit_tiny_patch16_224", VIT, "CC-BY-4.0 (test)")}
# two assemblies: CNN stem, a same-model pair (identity adapter), then ViT blocks; and ViT stem into CNN blocks
ASSEMBLIES = {
    "rank0_FZ": dict(rank=0, protocol="FZ", val_acc=0.61, blocks=[("cnn", 1, 1), ("cnn", 2, 2), ("vit", 2, 3)]),
    "rank0_FT": dict(rank=0, protocol="FT", val_acc=0.74, blocks=[("vit", 1, 1), ("cnn", 3, 4)]),
}


@pytest.fixture(scope="module")
def fmnist():
    return D.load_fashion_mnist(D.find_fashion_mnist(None))


@pytest.fixture(scope="module")
def test_images(fmnist):
    return D.to_images(fmnist.test_x[:32])


def _zoo(fmnist):
    """Two tiny 'pretrained' source models with the dissection the features stage would write."""
    torch.manual_seed(0)
    probe = D.to_images(fmnist.train_x[:16])
    out = {}
    for m, (arch, kwargs, lic) in ZOO.items():
        info = ST.dissect(timm.create_model(arch, num_classes=5, **kwargs).eval(), probe)
        zoo_meta = {"id": m, "arch": arch, "kwargs": kwargs, "num_classes": 5, "license": lic, "source": "A",
                    "classes": [0, 1, 2, 3, 4], "pretrained_from": "trained here"}
        out[m] = (info, A.source_entry(zoo_meta, info.meta, checkpoint_sha256="0" * 64))
    return out


def _fine_tune_a_little(asm, x, y):
    """A few steps, so weights and BatchNorm statistics differ from any fresh init."""
    opt = torch.optim.SGD(asm.parameters(), lr=0.05)
    asm.train()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(asm(x), y).backward()
        opt.step()
    return asm.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, fmnist):
    """Budget folder with two artifacts, as finetune_candidate writes them; returns folder and in-memory models."""
    folder = tmp_path_factory.mktemp("finetune") / "unit"
    folder.mkdir()
    zoo = _zoo(fmnist)
    x, y = D.to_images(fmnist.train_x[:32]), torch.as_tensor(fmnist.train_y[:32])
    models = {}
    for name, a in ASSEMBLIES.items():
        blocks = [{"model": m, "stage": i, "start": s, "end": e, "set": i} for i, (m, s, e) in enumerate(a["blocks"])]
        asm, _ = ST.build({"blocks": blocks}, {m: info for m, (info, _) in zoo.items()}, 10, "own", "random", seed=1)
        asm = _fine_tune_a_little(asm, x, y)
        info = {"id": f"unit-c{a['rank']:03d}", "budget": "unit", "rank": a["rank"], "protocol": a["protocol"],
                "params": sum(p.numel() for p in asm.parameters()), "macs": 1234, "proxy_score": 5.5, "proxy": "naswot",
                "val_acc": a["val_acc"], "test_acc": a["val_acc"] - 0.01, "trainable_params": 99,
                "data": {"fine_tuned_on": "32 Fashion-MNIST train images", "tested_on": "none (unit test)"}}
        A.save_assembly(asm, folder / f"{name}.json", blocks=blocks, sources={m: e for m, (_, e) in zoo.items()},
                        stem="own", adapter_init="random", info=info, reference_images=fmnist.test_x[:4])
        models[name] = asm
    return folder, models


def _copy_artifact(folder: Path, name: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".safetensors"):
        shutil.copy(folder / f"{name}{suffix}", dest / f"{name}{suffix}")
    return dest / f"{name}.json"


# ------------------------------------------------------------------------------------------ reload

@pytest.mark.parametrize("name", ASSEMBLIES)
def test_reloaded_assembly_gives_the_logits_of_evaluation_time(saved, test_images, tmp_path, name):
    folder, models = saved
    spec = _copy_artifact(folder, name, tmp_path / "elsewhere")  # spec + weights only: no zoo, no results/
    model = dery.load_assembly(spec)
    assert type(model) is ST.Assembly and not any(m.training for m in model.modules())
    with torch.no_grad():
        diff = (model(test_images) - models[name](test_images)).abs().max().item()
    assert diff <= 1e-6, diff
    assert A.reference_check(model) <= 1e-6


def test_loading_a_budget_folder_gives_its_best_assembly_by_validation_accuracy(saved):
    folder, _ = saved
    model = dery.load_assembly(folder)
    assert (model.dery_spec["rank"], model.dery_spec["protocol"]) == (0, "FT")  # val acc 0.74 beats 0.61


def test_loading_the_weights_file_finds_its_spec(saved):
    folder, _ = saved
    assert dery.load_assembly(folder / "rank0_FZ.safetensors").dery_spec["protocol"] == "FZ"


def test_loading_leaves_the_callers_random_state_alone(saved):
    folder, _ = saved
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    dery.load_assembly(folder / "rank0_FZ.json")
    torch.testing.assert_close(torch.rand(3), expected)


# ------------------------------------------------------------------------------------------ refusals

def test_weights_that_do_not_match_the_spec_hash_are_refused(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    spec = _copy_artifact(saved[0], "rank0_FZ", tmp_path)
    weights = spec.with_suffix(".safetensors")
    state = load_file(str(weights))
    state["head.fc.bias"] = state["head.fc.bias"] + 1  # still a valid file, no longer these weights
    save_file(state, str(weights))
    with pytest.raises(A.ArtifactError,
                       match=r"rank0_FZ\.safetensors do not match their spec .*rank0_FZ\.json.*restore"):
        dery.load_assembly(spec)


def test_a_spec_claiming_other_block_weights_is_refused(saved, tmp_path):
    spec = _copy_artifact(saved[0], "rank0_FZ", tmp_path)
    doc = json.loads(spec.read_text())
    doc["blocks"][1]["sha256"] = "f" * 64
    spec.write_text(json.dumps(doc))
    with pytest.raises(A.ArtifactError, match=r"weights of `blocks\.1` do not match"):
        dery.load_assembly(spec)


def test_a_spec_from_a_future_format_version_is_refused_with_the_fix(saved, tmp_path):
    spec = _copy_artifact(saved[0], "rank0_FZ", tmp_path)
    doc = json.loads(spec.read_text())
    doc["format_version"] = A.FORMAT_VERSION + 1
    spec.write_text(json.dumps(doc))
    with pytest.raises(A.ArtifactError, match=rf"format_version {A.FORMAT_VERSION + 1}.*reads up to "
                                              rf"{A.FORMAT_VERSION}.*Upgrade dery"):
        dery.load_assembly(spec)


def test_a_skipped_candidate_is_refused_with_the_reason(tmp_path):
    spec = tmp_path / "rank3_FZ.json"
    spec.write_text(json.dumps({"skipped": "budget unit has only 2 candidates"}))
    with pytest.raises(A.ArtifactError, match="records no trained assembly: budget unit has only 2 candidates"):
        dery.load_assembly(spec)


# ------------------------------------------------------------------------------------------ spec and card

def test_spec_describes_provenance_input_and_numbers(saved):
    spec = json.loads((saved[0] / "rank0_FZ.json").read_text())
    assert spec["format"] == "dery.assembly" and spec["format_version"] == A.FORMAT_VERSION
    assert [b["nodes"] for b in spec["blocks"]] == [["layer1.0"], ["layer2.0"], ["blocks.1", "blocks.2"]]
    assert all(len(b["sha256"]) == 64 for b in spec["blocks"])
    assert spec["sources"]["vit"]["arch"] == "vit_tiny_patch16_224" and spec["sources"]["vit"]["kwargs"] == VIT
    assert spec["sources"]["cnn"]["license"] == "Apache-2.0 (test)"
    assert [a["kind"] for a in spec["adapters"]] == ["identity", "stitch"]
    assert spec["adapters"][1]["to"] == {"fmt": "NLC", "channels": 32, "grid": [4, 4], "prefix": 0}
    assert spec["input"]["mean"] == D.MEAN and spec["input"]["std"] == D.STD and spec["input"]["height"] == 32
    assert spec["classes"][9] == "Ankle boot" and spec["head"]["num_classes"] == 10
    assert {"params", "macs", "val_acc", "test_acc", "proxy_score"} <= set(spec)


def test_model_card_names_sources_licences_data_and_numbers(saved):
    card = (saved[0] / "rank0_FZ.card.md").read_text()
    for text in ("vit_tiny_patch16_224", "resnet10t", "Apache-2.0 (test)", "CC-BY-4.0 (test)", "layer1.0",
                 "32 Fashion-MNIST train images", "61.00%", "1234", "dery.load_assembly", "onnx"):
        assert text in card, text


def test_preprocess_reproduces_the_training_inputs_from_arrays_and_image_files(fmnist, tmp_path):
    from PIL import Image

    raw = fmnist.test_x[:8]
    torch.testing.assert_close(dery.preprocess(raw), D.to_images(raw), rtol=0, atol=0)
    path = tmp_path / "boot.png"
    Image.fromarray(raw[0]).save(path)
    torch.testing.assert_close(dery.preprocess(path), D.to_images(raw[:1]), rtol=0, atol=0)
    with pytest.raises(A.ArtifactError, match="uint8"):
        dery.preprocess(raw.astype(np.float32) / 255)


# ------------------------------------------------------------------------------------------ exports

@pytest.mark.parametrize("name", ASSEMBLIES)
def test_onnx_export_matches_pytorch_on_real_images(saved, test_images, name):
    folder, models = saved
    with torch.no_grad():
        ref = models[name](test_images).numpy()
    out = X.run_onnx(folder / f"{name}.onnx", test_images.numpy())  # batch 32; exported at batch 1
    assert np.abs(out - ref).max() <= 1e-4
    spec = json.loads((folder / f"{name}.json").read_text())
    assert spec["exports"]["onnx"]["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("name", ASSEMBLIES)
def test_torchscript_export_matches_pytorch_on_real_images(saved, test_images, name):
    folder, models = saved
    traced = torch.jit.load(str(folder / f"{name}.torchscript.pt"))
    with torch.no_grad():
        diff = (traced(test_images) - models[name](test_images)).abs().max().item()
    assert diff <= 1e-5


# ------------------------------------------------------------------------------------------ MLflow registry

def _check_registered(uri: str, alias: str, model: torch.nn.Module, test_images: torch.Tensor) -> None:
    """``mlflow.pytorch.load_model`` and the pyfunc flavour (what `mlflow models serve` runs) give the same logits."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    with torch.no_grad():
        ref = model(test_images)
        loaded = mlflow.pytorch.load_model(f"models:/dery-unit-unit@{alias}")
        assert (loaded(test_images) - ref).abs().max().item() <= 1e-6
    served = mlflow.pyfunc.load_model(f"models:/dery-unit-unit@{alias}")
    assert np.abs(np.asarray(served.predict(test_images[:4].numpy())) - ref[:4].numpy()).max() <= 1e-6
    assert list(served.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3, 32, 32]


def test_registered_model_loads_back_from_the_sqlite_store(saved, test_images, tmp_path):
    from dery.stages.registry import register_models

    folder, models = saved
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    specs = [str(folder / f"{n}.json") for n in ASSEMBLIES]
    summary = register_models(specs, uri, "unit", str(tmp_path / "registered.json"))
    entry = summary["budgets"]["unit"]
    assert entry["name"] == "dery-unit-unit" and entry["uri"] == "models:/dery-unit-unit@best"
    assert entry["best"]["protocol"] == "FT", "alias `best`: the highest validation accuracy"
    _check_registered(uri, "best", models["rank0_FT"], test_images)
    _check_registered(uri, "rank0-FZ", models["rank0_FZ"], test_images)
    assert (tmp_path / "mlflow-artifacts").is_dir(), "artifacts beside the database, not in ./mlruns"
    again = register_models(specs, uri, "unit", str(tmp_path / "registered.json"))
    assert not any(v["new"] for v in again["budgets"]["unit"]["versions"]), "re-registering adds no version"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} did not answer within {seconds} s")


def test_registered_model_loads_back_from_a_live_mlflow_server(saved, test_images, tmp_path):
    from dery.stages.registry import register_models

    folder, models = saved
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # no background job runner: it only slows start and stop here
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(tmp_path / "server.log", "w") as server_log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "1", "--backend-store-uri", "sqlite:///" + str(tmp_path / "server.db"),
                                 "--artifacts-destination", str(tmp_path / "server-artifacts")],
                                stdout=subprocess.DEVNULL, stderr=server_log, env=env)
        try:
            _wait_until_up(url, proc)
            # one artifact is enough to show the HTTP path; the SQLite test covers aliases across versions
            register_models([str(folder / "rank0_FZ.json")], url, "unit", str(tmp_path / "registered.json"))
            _check_registered(url, "best", models["rank0_FZ"], test_images)
            assert any((tmp_path / "server-artifacts").rglob("*.safetensors")), "artifacts went through the server"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_swin_blocks_into_a_cnn_export_to_onnx(fmnist, test_images, tmp_path):
    """Swin's NHWC maps come out of a reshape; the adapter pools them with a static kernel ONNX can export."""
    torch.manual_seed(0)
    probe = D.to_images(fmnist.train_x[:16])
    swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=5, img_size=32, window_size=4, embed_dim=24,
                             depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2]).eval()
    infos = {"swin": ST.dissect(swin, probe),
             "cnn": ST.dissect(timm.create_model("resnet10t", num_classes=5).eval(), probe)}
    blocks = [{"model": "swin", "stage": 0, "start": 1, "end": 1, "set": 0},
              {"model": "cnn", "stage": 1, "start": 3, "end": 4, "set": 1}]
    asm, _ = ST.build({"blocks": blocks}, infos, 10, "own", "random", seed=1)
    asm.eval()
    X.export_onnx(asm, tmp_path / "m.onnx", test_images[:1])
    with torch.no_grad():
        want = asm(test_images).numpy()
    assert np.abs(X.run_onnx(tmp_path / "m.onnx", test_images.numpy()) - want).max() < 1e-4


def test_an_exporter_that_fails_costs_the_file_not_the_fine_tuned_weights(saved, fmnist, monkeypatch, tmp_path):
    folder, models = saved
    spec = json.loads((folder / "rank0_FZ.json").read_text())

    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator frobnicate")

    monkeypatch.setattr(X, "export_onnx", broken)
    out = A.save_assembly(models["rank0_FZ"], tmp_path / "rank0_FZ.json", blocks=spec["blocks"],
                          sources=spec["sources"], stem=spec["stem"], adapter_init="random",
                          info={k: spec.get(k) for k in ("id", "budget", "rank", "protocol", "params", "macs",
                                                         "proxy_score", "proxy", "val_acc", "test_acc")},
                          reference_images=fmnist.test_x[:4])
    assert "frobnicate" in out["exports"]["onnx"]["error"] and "file" in out["exports"]["torchscript"]
    assert "export failed" in (tmp_path / "rank0_FZ.card.md").read_text()
    model = dery.load_assembly(tmp_path / "rank0_FZ.json")
    assert isinstance(model, torch.nn.Module)
