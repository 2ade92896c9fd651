"""Where fine-tuning runs: the device, bf16 autocast, and several processes under torchrun + DDP.

One process on the CPU is the reference: ``Runtime()`` adds nothing to it (no wrapper, no extra RNG
draws, no autocast), so its weights stay bit-identical to runs made before this module existed.

Several processes (``finetune.processes: N``, or any launch under ``torchrun``) split every global
batch of the single-process run into N contiguous shards: every rank draws the same permutation and
the same augmentation from the same seeded generator, keeps its shard, and DDP averages the
gradients. With the loss of each shard weighted by its share of the batch (``fit`` does this), the
averaged gradient is the full batch's mean gradient, so only batch-dependent layers (BatchNorm
statistics, per rank) and float summation order make N processes differ from one.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

KEY = "finetune.device"


@dataclass(frozen=True)
class Runtime:
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world: int = 1
    amp: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice [lo, hi) of n items; sizes differ by at most one (rank order)."""
        q, r = divmod(n, self.world)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + (self.rank < r)

    def autocast(self) -> contextlib.AbstractContextManager:
        # bf16 needs no loss scaling; off, not even a disabled autocast is entered (the CPU path stays as it was)
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def all_sum(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)  # nccl reduces device tensors only
        dist.all_reduce(t)
        return t.item()

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm statistics everywhere (each rank updated its own from its shard)."""
        if self.world > 1:
            for b in model.buffers():
                dist.broadcast(b, 0)

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)


def pick_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``finetune.device``: auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N.

    Under torchrun (``local_rank`` given) each process takes GPU ``LOCAL_RANK``; an explicit index
    there would put every rank on one GPU, so it is refused.
    """
    name = str(name).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ValueError(f"{KEY} is {name!r}; use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise ValueError(f"{KEY} is {name!r} but torch {torch.__version__} sees no GPU (CUDA build: "
                         f"{torch.version.cuda}); set {KEY}: auto or cpu in your params file, or run on a machine "
                         "with a GPU and a CUDA build of torch.")
    if local_rank is not None:
        if name != "cuda":
            raise ValueError(f"{KEY} is {name!r} under torchrun, where each process takes cuda:LOCAL_RANK; "
                             f"set {KEY}: cuda and choose the GPUs with CUDA_VISIBLE_DEVICES.")
        name = f"cuda:{local_rank}"
    dev = torch.device(name)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{KEY} asks for {name} but only {torch.cuda.device_count()} GPU(s) are visible.")
    return dev


def use_amp(amp: bool | str, device: torch.device) -> bool:
    """``finetune.amp``: true (bf16 autocast), false, or auto (on CUDA only)."""
    return device.type == "cuda" if amp == "auto" else bool(amp)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: str = "auto", amp: bool | str = False) -> Runtime:
    """The runtime of this process; under torchrun (WORLD_SIZE > 1) also joins the process group."""
    world = world_size()
    if world == 1:
        dev = pick_device(device)
        return Runtime(dev, 0, 1, use_amp(amp, dev))
    dev = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, dist.get_rank(), world, use_amp(amp, dev))


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_split(n: int, batch_size: int, world: int) -> None:
    """Every step must give every rank an image (DDP needs all ranks in each gradient all-reduce)."""
    last = n - (math.ceil(n / batch_size) - 1) * batch_size
    if world > 1 and min(batch_size, last) < world:
        raise ValueError(f"{n} training images in batches of {batch_size} leave a step of {min(batch_size, last)} "
                         f"image(s) for {world} processes; use a finetune.batch_size (and a last batch, "
                         f"{n} mod batch_size) of at least {world}, or fewer finetune.processes.")


# ---------------------------------------------------------------- launching: torchrun from inside a stage

def launch(target: str, processes: int, kwargs: dict) -> None:
    """Run ``target(**kwargs)`` ("module:function") in ``processes`` processes on this node under torchrun; wait.

    Workers inherit stderr (the job's log file under Snakemake). Raises when any worker fails.
    """
    threads = max(1, torch.get_num_threads() // processes)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="dery-call-", delete=False) as f:
        json.dump({"target": target, "kwargs": kwargs, "threads": threads}, f, default=str)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "dery.distributed", f.name]
    try:
        err = sys.stderr if _has_fd(sys.stderr) else None
        proc = subprocess.run(cmd, stdout=err, stderr=err, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    finally:
        Path(f.name).unlink(missing_ok=True)
    if proc.returncode:
        raise RuntimeError(f"{target} in {processes} processes (torchrun) failed with exit code {proc.returncode}; "
                           "the workers' tracebacks are in the log above.")


def torchrun(fn):
    """Decorate a stage taking ``cfg``: with ``cfg["processes"] > 1`` (outside torchrun) it relaunches itself
    under torchrun and returns when every worker is done; rank 0 writes the outputs."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        call = sig.bind(*args, **kwargs).arguments
        n = int(call["cfg"].get("processes", 1))
        if n <= 1 or world_size() > 1:
            return fn(*args, **kwargs)
        launch(f"{fn.__module__}:{fn.__qualname__}", n, dict(call))

    return run


def _has_fd(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


def _worker(call_file: str) -> None:
    call = json.loads(Path(call_file).read_text())
    from . import repro  # the job's reproducibility mode reaches its DDP children through the environment

    repro.check_job(call["threads"])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s rank {os.environ.get('RANK', 0)} %(levelname)s %(message)s")
    module, _, name = call["target"].partition(":")
    fn = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    try:
        fn(**call["kwargs"])
    finally:
        finish()


if __name__ == "__main__":  # the worker side of launch(): python -m torch.distributed.run ... -m dery.distributed CALL
    from dery.distributed import _worker as worker  # the package's copy of this module, the one the stages import

    worker(sys.argv[1])
