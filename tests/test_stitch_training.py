"""Adapter training before fine-tuning (``stitching.train_steps``, dery/stitch_training.py): only the adapters
learn, towards the native input of the block each one feeds; off by default, and then nothing changes."""
import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from dery import stitch_training as STT
from dery.features import pool
from dery.stitching import build, dissect
from dery.training import fit

ROOT = Path(__file__).resolve().parents[1]


def smooth_images(n, g, side=32):
    """Images with structure at several scales (noise would leave the two models' features nearly unrelated)."""
    return nn.functional.interpolate(torch.randn(n, 3, side // 4, side // 4, generator=g), size=side, mode="bilinear")


@pytest.fixture(scope="module")
def timm_pair():
    """resnet10t's first two blocks, then ConvNeXt-atto from its second stage: a real cross-model join."""
    import timm

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    probe = smooth_images(32, g)
    infos = {"res": dissect(timm.create_model("resnet10t", num_classes=5).eval(), probe),
             "cnx": dissect(timm.create_model("convnext_atto", num_classes=5).eval(), probe)}
    start = infos["cnx"].meta["names"].index("stages.1.blocks.0")  # 1-based node index: names[0] is the stem
    spec = {"blocks": [{"model": "res", "start": 1, "end": 2}, {"model": "cnx", "start": start, "end": start + 1}]}
    return spec, infos, probe, smooth_images(96, g), smooth_images(48, g)


# ------------------------------------------------------------------------------- the toy with a known answer

class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Linear1x1(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.conv(x)


class Toy(nn.Module):
    """Dissectable like a timm model: a stem, then one node per child of ``stages`` (via ``feature_info``)."""

    def __init__(self, stem, blocks):
        super().__init__()
        self.stem, self.stages = stem, nn.Sequential(*blocks)
        self.feature_info = [{"module": f"stages.{i}"} for i in range(len(blocks))]
        self.num_classes = 5
        self.head = nn.Linear(blocks[-1].conv.out_channels, 5)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


def linear_target_pair():
    """Model b is model a's stem and first block, then a fixed 1x1 conv, then a block. An adapter from a's node 1
    into b's node 3 has as target that fixed 1x1 conv of its own input: a reachable optimum of zero error."""
    torch.manual_seed(0)
    a = Toy(nn.Conv2d(3, 8, 3, stride=2, padding=1), [Block(8, 8), Block(8, 8)])
    b = Toy(copy.deepcopy(a.stem), [copy.deepcopy(a.stages[0]), Linear1x1(8, 12), Block(12, 12)])
    for m in (a, b):
        m.train()(torch.randn(16, 3, 16, 16))  # non-trivial BatchNorm statistics, so a change would show
    probe = torch.randn(16, 3, 16, 16)
    infos = {"a": dissect(a.eval(), probe), "b": dissect(b.eval(), probe)}
    spec = {"blocks": [{"model": "a", "start": 1, "end": 1}, {"model": "b", "start": 3, "end": 3}]}
    return spec, infos


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------- the tests

def test_zero_steps_changes_nothing_so_fine_tuning_is_bit_identical():
    """train_steps 0 (the default): no weight, buffer, mode or random draw changes, and the fine-tuned assembly
    has the same bits as one fine-tuned without the call."""
    spec, infos = linear_target_pair()
    x = torch.randn(24, 3, 16, 16)
    y = torch.arange(24) % 10
    runs = []
    for call in (False, True):
        asm, _ = build(spec, infos, num_classes=10, stem="own", adapter_init="random", seed=3)
        built = state(asm)
        if call:
            rng = torch.get_rng_state()
            assert STT.train_adapters(asm, spec, infos, x, steps=0, lr=1e-3, batch_size=8, seed=0) == []
            assert torch.equal(torch.get_rng_state(), rng) and not any(m.training for m in asm.modules())
            after = state(asm)
            assert all(torch.equal(after[k], v) for k, v in built.items())
        fit(asm, x, y, x[:8], y[:8], epochs=1, batch_size=8, lr=1e-3, weight_decay=0.0, label_smoothing=0.0,
            warmup_epochs=0.0, seed=0)
        runs.append(state(asm))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_native_input_is_what_the_features_stage_measured(timm_pair):
    """The target is the block's native input: the source model's own features there (pooled: the probe features
    the features stage wrote for the least-squares init)."""
    spec, infos, probe, _, _ = timm_pair
    block, info = spec["blocks"][1], infos[spec["blocks"][1]["model"]]
    native = STT.native_input(info, block["start"], probe)
    assert tuple(native.shape[1:]) == tuple(info.meta["out_shapes"][block["start"] - 1])
    torch.testing.assert_close(pool(native, "NCHW"), torch.as_tensor(info.feats[block["start"] - 1]),
                               atol=1e-5, rtol=1e-4)


def test_training_changes_only_the_adapters_and_lowers_their_held_out_error(timm_pair):
    spec, infos, _, train, held_out = timm_pair
    asm, _ = build(spec, infos, num_classes=10, stem="own", adapter_init="random", seed=0)
    asm.train()  # fine-tuning's mode: the phase must still not update a single BatchNorm statistic
    before, zoo_before = state(asm), {m: state(i.model) for m, i in infos.items()}
    err_before = STT.adapter_errors(asm, spec, infos, held_out)
    report = STT.train_adapters(asm, spec, infos, train, steps=12, lr=1e-2, batch_size=16, seed=0,
                                eval_images=held_out)
    after = state(asm)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"adapters.0.proj.weight", "adapters.0.proj.bias"}
    assert all(m.training for m in asm.modules())  # every module's mode is given back
    assert all(torch.equal(v, state(infos[m].model)[k]) for m, s in zoo_before.items() for k, v in s.items())
    err_after = STT.adapter_errors(asm, spec, infos, held_out)
    assert len(report) == 1 and report[0]["feeds"] == "cnx[3-4]" and report[0]["steps"] == 12
    assert report[0]["mse_before"] == pytest.approx(err_before[0]["mse"])
    assert report[0]["mse_after"] == pytest.approx(err_after[0]["mse"])
    assert err_after[0]["mse"] < 0.95 * err_before[0]["mse"]
    assert err_after[0]["r2"] > err_before[0]["r2"]


def test_same_seed_same_adapter_weights():
    spec, infos = linear_target_pair()
    x = torch.randn(40, 3, 16, 16)
    weights = []
    for seed in (0, 0, 1):
        asm, _ = build(spec, infos, num_classes=10, stem="own", adapter_init="random", seed=0)
        STT.train_adapters(asm, spec, infos, x, steps=5, lr=1e-2, batch_size=8, seed=seed)
        weights.append(state(asm.adapters))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])  # the seed orders the batches


def test_an_adapter_converges_to_a_reachable_linear_target():
    """Known answer: the target is a fixed 1x1 conv of the adapter's input, so the error can go to zero."""
    spec, infos = linear_target_pair()
    g = torch.Generator().manual_seed(2)
    train, held_out = torch.randn(64, 3, 16, 16, generator=g), torch.randn(32, 3, 16, 16, generator=g)
    asm, _ = build(spec, infos, num_classes=10, stem="own", adapter_init="random", seed=0)
    (r,) = STT.train_adapters(asm, spec, infos, train, steps=200, lr=1e-2, batch_size=16, seed=0,
                              eval_images=held_out)
    assert r["mse_after"] < r["mse_before"] / 10
    assert r["r2_after"] > 0.95


@pytest.mark.parametrize("change,where", [({"train_steps": -1}, "stitching.train_steps"),
                                          ({"train_lr": 0}, "stitching.train_lr"),
                                          ({"train_batch_size": 0}, "stitching.train_batch_size")])
def test_params_check_refuses_bad_adapter_training_values(change, where):
    from dery.checks import ParamsError, check

    config = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    config["stitching"] = {**config.get("stitching", {}), **change}
    with pytest.raises(ParamsError, match=where.replace(".", r"\.")):
        check(config, ROOT / "workflow" / "schemas" / "params.schema.yaml", ROOT)


def test_adapter_training_is_off_by_default():
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    config.pop("stitching", None)
    validate(config, str(ROOT / "workflow" / "schemas" / "params.schema.yaml"))  # fills the schema's defaults
    assert config["stitching"] == {"init": "lstsq", "train_steps": 0, "train_lr": 0.001, "train_batch_size": 64}
