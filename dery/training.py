"""Pretraining and fine-tuning: AdamW, warm-up + cosine, label smoothing, seeded augmentation.

Protocols (paper §4): FT trains every weight; FZ freezes what is pretrained (``Assembly.pretrained_modules``:
the blocks, and the stem when it is the first model's own) with their BatchNorm statistics (frozen modules stay
in eval mode, where the authors' code let them drift) and trains the new parts: adapters, head and a fresh stem.
Model selection: the epoch with the best accuracy on the validation split carved from the target train set; the
test set is only touched by ``accuracy`` on the final model, once.

Device and processes come from a ``distributed.Runtime``; the default (one process, CPU) is the reference path
and trains exactly as it did before GPUs and DDP were supported.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import distributed as DIST
from .data import augment


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val: float = -1.0
    seconds: float = 0.0
    images_per_second: float = 0.0
    trainable_params: int = 0
    device: str = "cpu"
    processes: int = 1


class _Frozen:
    """Keeps the given modules in eval mode while the rest of the model trains."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(False)

    def apply(self):
        for m in self.modules:
            m.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             runtime: DIST.Runtime | None = None) -> float:
    """Top-1 accuracy; ``x`` stays on the CPU and goes to the model's device batch by batch. With a runtime of
    several processes each rank scores its shard of ``x`` and the counts are summed: every rank gets the total."""
    model.eval()
    rt = runtime or DIST.Runtime(next(model.parameters(), torch.empty(0)).device)
    lo, hi = rt.shard(len(x))
    correct = 0
    for s in range(lo, hi, batch_size):
        e = min(s + batch_size, hi)
        with rt.autocast():
            pred = model(x[s:e].to(rt.device, non_blocking=True)).argmax(1).cpu()
        correct += (pred == y[s:e]).sum().item()
    return rt.all_sum(correct) / len(x)


def decay_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW's groups: weight decay on weights of two or more dimensions, none on biases and norm scales.

    timm's ``create_optimizer_v2`` (``param_groups_weight_decay``) makes the same split and also spares what a
    model lists in ``no_weight_decay()`` (ViT's position embedding and class token, Swin's relative position
    tables): those are decayed here. tests/test_training.py pins the difference; adopting timm's groups changes
    every committed number, so it waits for a change that regenerates them anyway.
    """
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def lr_factor(step: int, warm: int, total: int) -> float:
    """The learning rate at optimiser step ``step`` as a fraction of the peak: linear warm-up over ``warm`` steps
    reaching the peak at the last of them, then cosine to 0 at ``total``. After the warm-up this is timm's
    ``CosineLRScheduler`` (``warmup_prefix``, per-step); timm's warm-up starts at ``warmup_lr_init`` and reaches
    the peak one step later (tested)."""
    if step < warm:
        return (step + 1) / max(1, warm)
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def fit(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, *,
        epochs: int, batch_size: int, lr: float, weight_decay: float, label_smoothing: float, warmup_epochs: float,
        seed: int, frozen: list[nn.Module] | None = None, name: str = "model", progress: bool = False,
        resume: str | os.PathLike | None = None, runtime: DIST.Runtime | None = None) -> History:
    """Train in place; on return the model holds the weights of its best validation epoch (on the runtime's device).

    With ``resume`` (a file path), the full training state (weights, optimiser, schedule, RNG,
    history, best weights) is saved there atomically after every epoch, and a run that finds
    the file continues from it: a killed job restarts from its last finished epoch and ends
    with the same weights as an uninterrupted run. The file is removed when training ends.

    With a runtime of several processes (torchrun), every rank draws the single-process run's permutation and
    augmentation, trains on its shard of each batch with the shard's loss weighted by its share of the batch
    (DDP's gradient average is then the batch mean), validates its shard of ``val_x``, and only rank 0 writes
    the resume file. The data tensors stay on the CPU; batches move to the device.
    """
    from tqdm.auto import tqdm

    rt = runtime or DIST.Runtime()
    DIST.check_split(len(train_x), batch_size, rt.world)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(rt.device)
    freezer = _Frozen(frozen or [])
    params = [p for p in model.parameters() if p.requires_grad]
    hist = History(trainable_params=sum(p.numel() for p in params), device=str(rt.device), processes=rt.world)
    opt = torch.optim.AdamW(decay_groups(params, weight_decay), lr=lr)
    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    total, warm = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warm, total))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    best_state = None
    start = time.perf_counter()
    seen, first_epoch = 0, 0
    if resume is not None and Path(resume).exists():
        state = load_state(resume)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], rt.device)
        best_state = state["best"]
        first_epoch = int(state["epoch"])
        hist = History(**{**state["history"], "epochs": list(state["history"]["epochs"]),
                          "device": str(rt.device), "processes": rt.world})
    net = rt.wrap(model)
    for epoch in range(first_epoch, epochs):
        net.train()
        freezer.apply()
        order = torch.randperm(len(train_x), generator=g)
        running, count = 0.0, 0
        for step in tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{epochs}", disable=not progress,
                         mininterval=10):
            idx = order[step * batch_size: (step + 1) * batch_size]
            xb, yb = augment(train_x[idx], g), train_y[idx]  # the whole batch on every rank: g stays in step
            lo, hi = rt.shard(len(idx))
            if rt.world > 1:
                xb, yb = xb[lo:hi], yb[lo:hi]
            with rt.autocast():
                loss = loss_fn(net(xb.to(rt.device, non_blocking=True)), yb.to(rt.device, non_blocking=True))
            if rt.world > 1:  # shard mean x its share x world: DDP's average over ranks is then the batch mean
                loss = loss * ((hi - lo) * rt.world / len(idx))
            batch_loss = rt.all_sum(loss.item() * len(idx) / rt.world) / len(idx) if rt.world > 1 else loss.item()
            if not math.isfinite(batch_loss):  # the same verdict on every rank: none is left waiting in backward
                raise FloatingPointError(f"{name}: loss is {batch_loss} at epoch {epoch + 1}, step {step + 1}; "
                                         "lower the learning rate in your params file.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += batch_loss * len(idx)
            count += len(idx)
        seen += count
        rt.sync_buffers(model)
        val = accuracy(model, val_x, val_y, runtime=rt)
        hist.epochs.append({"epoch": epoch + 1, "train_loss": running / count, "val_acc": val,
                            "lr": opt.param_groups[0]["lr"]})
        if val > hist.best_val:
            hist.best_val, hist.best_epoch = val, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if resume is not None and epoch + 1 < epochs and rt.main:
            save_state(resume, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict(), "generator": g.get_state(),
                                "torch_rng": torch.get_rng_state(), "best": best_state, "epoch": epoch + 1,
                                "history": asdict(hist),
                                **({"cuda_rng": torch.cuda.get_rng_state(rt.device)} if rt.device.type == "cuda"
                                   else {})})
    if resume is not None and rt.main:
        Path(resume).unlink(missing_ok=True)
    hist.seconds = time.perf_counter() - start
    hist.images_per_second = seen / max(hist.seconds, 1e-9)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return hist


def save_state(path: str | os.PathLike, state: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: str | os.PathLike) -> dict:
    """Load a resume file without executing code (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"resume file {path} is unreadable or unsafe ({type(exc).__name__}: {exc}); "
                           "delete it to train from the start.") from exc
