"""Devices and processes (dery.distributed): the ``finetune.device`` key, DDP fine-tuning against one process,
and the single-process CPU path against ``fit`` as it was before either existed.

The two-process runs are real: ``torch.distributed.run`` (torchrun) starts two CPU workers that join a gloo process
group, through the same ``@torchrun`` relaunch a fine-tuning stage makes with ``finetune.processes: 2``.
"""
import contextlib
import math
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn

from dery import distributed as DIST
from dery.data import augment
from dery.training import accuracy, fit

KW = dict(epochs=2, batch_size=32, lr=2e-3, weight_decay=0.05, label_smoothing=0.1, warmup_epochs=0.5, seed=7)
NORMS = ("batch", "group")
# GroupNorm runs in float64: there the runs may differ by round-off only, and float32 round-off is not small
# enough to compare against (see test_two_processes_train_as_one). BatchNorm stays in the production float32.
DTYPE = {"batch": torch.float32, "group": torch.float64}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Training here is tiny: one thread is faster than two fighting other jobs for two cores (measured 1.3 s vs
    10-24 s per run on a loaded machine). The workers get one each from torchrun already."""
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


def images(n: int, seed: int, dtype: torch.dtype = torch.float32):
    """n 32x32 images of 5 classes: noise with a bright horizontal band whose row is the class (flips keep it)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (n,), generator=g)
    x = 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    for c in range(5):
        x[y == c, :, 2 + 6 * c: 6 + 6 * c, 8:24] += 2.0
    return x.to(dtype), y


def net(norm: str = "batch", dtype: torch.dtype = torch.float32) -> nn.Module:
    """timm's ResNet-10-T; ``group``: GroupNorm instead of BatchNorm (no layer couples the images of a batch)."""
    import timm
    from timm.layers import GroupNorm1

    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=5,
                             **({"norm_layer": GroupNorm1} if norm == "group" else {})).to(dtype)


def small() -> nn.Module:
    """A BatchNorm CNN small enough to train twice in a fraction of a second."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


# ---------------------------------------------------------------- (a) the device key

def test_auto_is_the_cpu_without_a_gpu_and_cuda_without_one_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert DIST.pick_device("auto") == DIST.pick_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=r"finetune\.device is '" + name + "' but .* sees no GPU.*auto or cpu"):
            DIST.pick_device(name)
    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
        DIST.pick_device("tpu")
    rt = DIST.setup("auto", "auto")  # no WORLD_SIZE: one process, nothing joined, no autocast
    assert rt == DIST.Runtime() and isinstance(rt.autocast(), contextlib.nullcontext)


def test_gpu_choice_per_process(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert DIST.pick_device("auto") == torch.device("cuda") and DIST.pick_device("cuda:1") == torch.device("cuda:1")
    assert DIST.pick_device("cuda", local_rank=1) == DIST.pick_device("auto", local_rank=1) == torch.device("cuda:1")
    with pytest.raises(ValueError, match="only 2 GPU"):
        DIST.pick_device("cuda:2")
    with pytest.raises(ValueError, match="under torchrun.*CUDA_VISIBLE_DEVICES"):
        DIST.pick_device("cuda:0", local_rank=1)
    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    assert DIST.use_amp("auto", cuda) and not DIST.use_amp("auto", cpu) and not DIST.use_amp(False, cuda)
    assert DIST.use_amp(True, cpu)


def test_shards_cover_every_batch_once_and_too_small_batches_are_refused():
    for n in range(12):
        for world in (1, 2, 3, 4):
            cuts = [DIST.Runtime(rank=r, world=world).shard(n) for r in range(world)]
            assert [i for lo, hi in cuts for i in range(lo, hi)] == list(range(n))
            assert max(hi - lo for lo, hi in cuts) - min(hi - lo for lo, hi in cuts) <= 1
    x, y = images(33, 0)  # 32 + 1: the last step would leave rank 1 without an image
    with pytest.raises(ValueError, match="step of 1 image.*2 processes"):
        fit(small(), x, y, x, y, runtime=DIST.Runtime(world=2), **KW)


# ---------------------------------------------------------------- (c) one process: bit-identical to fit before DDP

def reference_fit(model, x, y, vx, vy, *, epochs, batch_size, lr, weight_decay, label_smoothing, warmup_epochs, seed):
    """``dery.training.fit`` as it was before devices and DDP (less resume and progress bars)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
                             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=lr)
    steps = math.ceil(len(x) / batch_size)
    total, warm = epochs * steps, int(warmup_epochs * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / max(1, warm) if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    best, best_state, losses = -1.0, None, []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        running = 0.0
        for step in range(steps):
            idx = order[step * batch_size: (step + 1) * batch_size]
            loss = loss_fn(model(augment(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
        losses.append(running / len(x))
        model.eval()
        with torch.no_grad():
            val = sum((model(vx[s: s + 500]).argmax(1) == vy[s: s + 500]).sum().item()
                      for s in range(0, len(vx), 500)) / len(vx)
        if val > best:
            best, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return best, losses


def test_one_cpu_process_trains_bit_for_bit_as_before():
    (x, y), (vx, vy) = images(80, 0), images(40, 1)  # 80 = 32 + 32 + 16: a short last batch too
    ref = small()
    best, losses = reference_fit(ref, x, y, vx, vy, **KW)
    for runtime in (None, DIST.setup("cpu", "auto")):  # fit's default, and what the stage passes
        model = small()
        hist = fit(model, x, y, vx, vy, runtime=runtime, **KW)
        assert hist.best_val == best and [e["train_loss"] for e in hist.epochs] == losses
        assert (hist.device, hist.processes) == ("cpu", 1)
        for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
            assert torch.equal(a, b), k
        assert accuracy(model, x, y, runtime=runtime) == accuracy(ref, x, y)


# ---------------------------------------------------------------- (b) two processes (torchrun, gloo) vs one

@DIST.torchrun
def train_worker(cfg: dict, out: str) -> None:
    """Runs in each torchrun worker: both networks under DDP, then a run whose loss is NaN; every rank saves."""
    rt = DIST.setup(cfg["device"])
    for norm in NORMS:
        (x, y), (vx, vy) = images(128, 0, DTYPE[norm]), images(64, 1, DTYPE[norm])
        model = net(norm, DTYPE[norm])
        hist = fit(model, x, y, vx, vy, runtime=rt, **KW)
        torch.save({"state": model.state_dict(), "hist": asdict(hist), "acc": accuracy(model, x, y, runtime=rt)},
                   Path(out) / f"{norm}.rank{rt.rank}.pt")
    (x, y), (vx, vy) = images(128, 0), images(64, 1)
    try:
        fit(net("group"), x * float("nan"), y, vx, vy, runtime=rt, **KW)
    except FloatingPointError as exc:
        (Path(out) / f"nan.rank{rt.rank}.txt").write_text(str(exc))


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    tests = str(Path(__file__).parent)  # the workers import this module by name
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p))
        train_worker({"processes": 2, "device": "cpu"}, str(out))
    return {f.stem: torch.load(f, weights_only=True) if f.suffix == ".pt" else f.read_text() for f in out.iterdir()}


def _flat(state: dict, keys: list[str]) -> torch.Tensor:
    return torch.cat([state[k].flatten() for k in keys])


@pytest.mark.parametrize("norm", NORMS)
def test_two_processes_train_as_one(ddp_runs, norm):
    """Both runs see the same images, augmentation and batch-mean gradients (the shard losses are weighted by
    their share of the batch, so DDP's average of per-rank gradients is the full batch's mean gradient).

    GroupNorm (no layer couples the images of a batch): in exact arithmetic the runs are equal; they differ only in
    the order of additions (the all-reduce adds the two halves' gradients; one backward adds all terms at once),
    and the CPU's instruction set changes that order too. In float32 this round-off, ~1e-7 of a gradient's terms,
    reaches AdamW's ε = 1e-8 on small gradients, where the step m/(√v + ε) turns it into an update of up to the
    learning rate: after 8 steps the gap is 1.7e-6 (AVX-512), 2.2e-6 (ATen without SIMD) or 1.5e-3 (AVX2) of how
    far the weights moved, chaotic, with no bound to derive it from. In float64 (u = 2⁻⁵³, 2⁻²⁹ of float32's)
    the same round-off lies eight orders of magnitude below ε and stays round-off: the worst float32 gap scaled
    by 2⁻²⁹ bounds the float64 gap by 3e-12 of the displacement (measured 3.9e-15 to 4.3e-15 under all three
    instruction sets). 1e-9 leaves 300x that and still catches any real mismatch (wrong shards, no gradient average: the
    weights then differ by their own size). Losses likewise to 1e-9 (measured 1.3e-16); accuracies within one
    image (a logit tie).

    BatchNorm (float32, the production path): each rank normalises its half-batch with its own statistics
    (SyncBatchNorm is CUDA-only). That difference is the algorithm's, not round-off (float64 gives the same numbers
    to 3 digits, as do the three instruction sets), and AdamW's per-weight normalisation turns small gradient
    changes into updates of full size: losses stay within 5% (measured 1.06%), the updates point the same way
    (cosine > 0.25, measured 0.5408-0.5410), accuracy within 0.1 (measured equal), the running statistics within
    30% of how far they moved (rank 0's half-batches; measured 9.4%)."""
    r0, r1 = ddp_runs[f"{norm}.rank0"], ddp_runs[f"{norm}.rank1"]
    for k, v in r0["state"].items():  # DDP keeps the replicas equal (buffers: rank 0's, broadcast before validation)
        assert torch.equal(v, r1["state"][k]), k
    timing = {k: r0["hist"][k] for k in ("seconds", "images_per_second")}
    assert r0["hist"] == {**r1["hist"], **timing} and r0["hist"]["processes"] == 2

    (x, y), (vx, vy) = images(128, 0, DTYPE[norm]), images(64, 1, DTYPE[norm])
    init, single = net(norm, DTYPE[norm]), net(norm, DTYPE[norm])
    hist = fit(single, x, y, vx, vy, **KW)
    start, one, two = init.state_dict(), single.state_dict(), r0["state"]
    params = [k for k, _ in single.named_parameters()]
    a, b, s = (_flat(sd, params) for sd in (one, two, start))
    gap, moved = (a - b).norm().item(), (a - s).norm().item()
    losses = [e["train_loss"] for e in hist.epochs], [e["train_loss"] for e in r0["hist"]["epochs"]]
    if norm == "group":
        assert gap < 1e-9 * moved, (gap, moved)
        assert losses[0] == pytest.approx(losses[1], rel=1e-9)
        assert abs(r0["acc"] - accuracy(single, x, y)) <= 1 / len(x)  # a logit tie may flip one image
        assert abs(r0["hist"]["best_val"] - hist.best_val) <= 1 / len(vx)
    else:
        assert torch.nn.functional.cosine_similarity(a - s, b - s, 0).item() > 0.25
        assert losses[0] == pytest.approx(losses[1], rel=0.05)
        assert abs(r0["acc"] - accuracy(single, x, y)) <= 0.1
        stats = [k for k in one if "running" in k]
        a, b, s = (_flat(sd, stats) for sd in (one, two, start))
        assert (a - b).norm() < 0.3 * (a - s).norm()


def test_a_nan_loss_stops_every_process_at_the_same_step(ddp_runs):
    assert ddp_runs["nan.rank0"] == ddp_runs["nan.rank1"] and "epoch 1, step 1" in ddp_runs["nan.rank0"]


def test_a_failing_worker_fails_the_launch():
    with pytest.raises(RuntimeError, match="in 2 processes .torchrun. failed"):
        DIST.launch("dery.distributed:check_split", 2, {"n": 3, "batch_size": 2, "world": 2})
