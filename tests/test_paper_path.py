"""The paper-scale code path, offline: local weight files loaded the way timm loads its own
(dery/hub.py), the paper's datasets and metric (dery/datasets.py, dery/evaluation.py), and
params/paper_offline_test.yaml through Snakemake end to end on generated ImageFolder images."""
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from dery import datasets as DS
from dery import hub, zoo
from dery.evaluation import mean_per_class_accuracy

ROOT = Path(__file__).resolve().parents[1]
CFG = yaml.safe_load((ROOT / "params" / "paper_offline_test.yaml").read_text())


def _state(model):
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def write_weights(work: Path) -> None:
    """Every zoo entry of the offline config: a pretrained=False timm model saved to its `weights:` file."""
    for i, entry in enumerate(CFG["zoo"]):
        torch.manual_seed(100 + i)
        state = _state(timm.create_model(entry["arch"], pretrained=False, num_classes=5, **entry["kwargs"]))
        path = work / entry["weights"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if "encoder_q." in (entry.get("remap") or {}):  # the layout of a MoCo v2 checkpoint
            ckpt = {f"module.encoder_q.{k}": v for k, v in state.items()}
            ckpt.update({f"module.encoder_k.{k}": v.clone() for k, v in state.items()})
            ckpt.update({"module.queue": torch.randn(16, 8), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
            torch.save({"epoch": 200, "arch": entry["arch"], "state_dict": ckpt}, path)
        elif path.suffix == ".pth":
            torch.save(state, path)
        else:
            save_file(state, str(path))


def write_images(root: Path, train_per_class: int = 36, test_per_class: int = 10) -> None:
    """10 classes of 32x32 RGB PNGs (class = a colour and a stripe orientation, plus noise): learnable, tiny."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c in range(10):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            stripes = np.sin((xx if c % 2 else yy) * (1 + c // 2) * 0.4)
            for j in range(n):
                base = np.stack([stripes * (40 + 20 * ((c + k) % 3)) for k in range(3)], -1) + 128
                img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{j:03d}.png")


# ------------------------------------------------------------------ hub: local weights
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    work = tmp_path_factory.mktemp("weights")
    write_weights(work)
    return work


@pytest.mark.parametrize("i", range(len(CFG["zoo"])))
def test_local_weights_load_through_timm_with_every_tensor(weights, i):
    entry = CFG["zoo"][i]
    torch.manual_seed(100 + i)
    want = _state(timm.create_model(entry["arch"], pretrained=False, num_classes=5, **entry["kwargs"]))
    got = zoo.create(entry["arch"], 5, entry["kwargs"], weights / entry["weights"], entry.get("remap")).state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)  # head included: same class count, kept


def test_a_head_of_another_size_is_replaced_and_the_body_kept(weights):
    entry = CFG["zoo"][2]
    torch.manual_seed(102)
    want = _state(timm.create_model(entry["arch"], pretrained=False, num_classes=5, **entry["kwargs"]))
    got = zoo.create(entry["arch"], 10, entry["kwargs"], weights / entry["weights"]).state_dict()
    assert got["head.weight"].shape == (10, 64)
    assert all(torch.equal(got[k], want[k]) for k in want if not k.startswith("head."))


def test_a_checkpoint_with_another_layout_names_keys_and_the_remap_that_fixes_it(weights):
    entry = CFG["zoo"][1]
    with pytest.raises(hub.HubError, match=r"does not fit .*encoder_k\.bn1\.bias.*`encoder_\w\.` \(128 keys\), "
                                           r"`encoder_\w\.` \(128 keys\).*remap: \{"):
        zoo.create(entry["arch"], 5, entry["kwargs"], weights / entry["weights"])  # no remap


def test_weights_of_another_width_name_the_mis_shaped_tensors(weights):
    entry = CFG["zoo"][0]
    with pytest.raises(hub.HubError, match=r"95 have other shapes \(e\.g\. layer1\.0\.bn1\.bias: \(16,\) vs \(64,\)"):
        zoo.create(entry["arch"], 5, {}, weights / entry["weights"])  # full-width resnet18


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(zoo.ZooError, match="nope.safetensors does not exist"):
        zoo.create("resnet18", 5, {}, tmp_path / "nope.safetensors")


def test_pretrained_tags_are_checked_and_offline_hub_loading_says_how_to_go_local(monkeypatch):
    zoo.check_arch("resnet50.tv_in1k")
    with pytest.raises(zoo.ZooError, match="no such pretrained tag; it has .*resnet50.tv_in1k"):
        zoo.check_arch("resnet50.nonsense_in1k")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(hub.HubError, match="set `weights:` to its path"):
        zoo.create("resnet18.tv_in1k", 5, pretrained=True)


def test_paper_params_validate_and_hold_the_papers_zoo_and_budgets():
    from dery.checks import _schema_problems

    paper = yaml.safe_load((ROOT / "params" / "paper.yaml").read_text())
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "params.schema.yaml").read_text())
    assert _schema_problems(paper, schema) == []
    assert len(paper["zoo"]) == 24
    for m in paper["zoo"]:
        zoo.check_arch(m["arch"])
        assert m.get("pretrained") or m.get("weights"), m["id"]
    assert [(b["params_m"], b["macs_m"]) for b in paper["reassembly"]["budgets"]] == \
        [(10, 3000), (30, 6000), (50, 10000), (90, 20000)]
    assert paper["partition"]["K"] == 4


# ------------------------------------------------------------------ datasets and the metric
def test_mean_per_class_accuracy():
    assert mean_per_class_accuracy([0, 0, 1, 1, 1, 2], [0, 0, 1, 1, 2, 2]) == pytest.approx((1 + 1 + 0.5) / 3)
    assert mean_per_class_accuracy([1, 1, 1, 1], [1, 1, 1, 0]) == pytest.approx(0.5)  # top-1 would say 0.75


@pytest.mark.parametrize("name", ["cifar10", "pets", "imagenet", "cub200", "cars"])
def test_a_missing_dataset_names_the_expected_path(tmp_path, name):
    with pytest.raises(DS.DatasetMissing, match=f"dataset `{name}` not found: expected .* under {tmp_path}"):
        DS.build(name, tmp_path, "train", download=False)


def test_paper_transforms_give_224_px_tensors():
    from PIL import Image

    img = Image.fromarray(np.full((300, 400, 3), 128, np.uint8))
    assert DS.paper_transforms(True)(img).shape == (3, 224, 224)
    assert DS.paper_transforms(False)(img).shape == (3, 224, 224)
    assert DS.paper_transforms(False, small_source=True)(Image.new("RGB", (32, 32))).shape == (3, 224, 224)


def test_image_folder_builds_and_converts_for_the_pipeline(tmp_path):
    write_images(tmp_path / "imgs", train_per_class=3, test_per_class=2)
    ds = DS.build("folder", tmp_path / "imgs", "test", transform=DS.paper_transforms(False))
    assert len(ds) == 20 and ds[0][0].shape == (3, 224, 224)
    from dery.data import load_fashion_mnist

    arrays = load_fashion_mnist(DS.folder_to_idx(tmp_path / "imgs", tmp_path / "idx"))
    assert arrays.train_x.shape == (30, 28, 28) and arrays.test_x.shape == (20, 28, 28)
    assert sorted(set(arrays.train_y.tolist())) == list(range(10))


# ------------------------------------------------------------------ the workflow, end to end
def test_paper_offline_config_runs_end_to_end(tmp_path):
    from conftest import new_project, snakemake

    work = new_project(tmp_path / "paper")
    write_weights(work)
    write_images(work / "resources" / "paper-images")
    start = time.perf_counter()
    snakemake(work, "results/summary.md", "--cores", "2", "--configfile", "params/paper_offline_test.yaml")
    seconds = time.perf_counter() - start
    print(f"paper_offline_test workflow: {seconds:.0f} s")
    for m in CFG["zoo"]:
        meta = yaml.safe_load((work / "results" / "zoo" / f"{m['id']}.json").read_text())
        assert meta["pretrained_from"] == m["weights"]
    summary = (work / "results" / "summary.md").read_text()
    assert "tiny" in summary
    assert (work / "resources" / "paper-images-idx28" / "classes.txt").read_text().split() == \
        [f"class{c:02d}" for c in range(10)]
