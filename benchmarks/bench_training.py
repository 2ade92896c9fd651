"""Row 7: fine-tuning throughput of ``dery.training.fit`` (what the finetune stage runs) against a plain, hand-written
training loop over the same timm model: same optimiser (AdamW), loss (cross-entropy with label smoothing), batch
size and number of steps; and the same for a stitched assembly."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .common import CLOCK, Result, Row, fmt_s, probe_uint8, timed, yes, zoo_models

TARGET = 0.9


def plain_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, lr: float, weight_decay: float,
               label_smoothing: float, seed: int = 0) -> None:
    """The limit: one pass over (x, y) in shuffled minibatches, forward, loss, backward, AdamW step; nothing else."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    model.train()
    order = torch.randperm(len(x), generator=g)
    for s in range(0, len(x), batch_size):
        idx = order[s: s + batch_size]
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def paired(a, b, repeats: int) -> dict[str, float]:
    """Median times of a and b and the median of their per-round ratio a/b, run in pairs whose order alternates
    (a b, b a, ...) after one untimed round: on a machine shared with other jobs, load drifts within seconds, and a
    pair's ratio cancels most of it."""
    import statistics

    a(), b()
    ta, tb, r = [], [], []
    for i in range(repeats):
        order = [("a", a), ("b", b)] if i % 2 == 0 else [("b", b), ("a", a)]
        got = {}
        for k, fn in order:
            t = CLOCK()
            fn()
            got[k] = CLOCK() - t
        ta.append(got["a"])
        tb.append(got["b"])
        r.append(got["a"] / got["b"])
    return {"a": statistics.median(ta), "b": statistics.median(tb), "ratio": statistics.median(r)}


def _assembly(params: dict[str, Any], models: dict[str, nn.Module], tiny: bool = False) -> tuple[str, nn.Module]:
    """A stitched network of the zoo: the first model's first third, the second model's middle, the last model's end
    (least-squares adapters fitted on random-weight probe features)."""
    from dery import data as D
    from dery import stitching as ST

    from .bench_proxy import even_blocks

    ids = list(models)
    picks = [ids[0], ids[1 % len(ids)], ids[-1]]
    probe = D.to_images(probe_uint8(16 if tiny else 64, seed=1))
    infos = {m: ST.dissect(models[m], probe) for m in dict.fromkeys(picks)}
    blocks = []
    for s, m in enumerate(picks):
        a, e = even_blocks(len(infos[m].trace.nodes), 3)[s]
        blocks.append({"model": m, "start": a, "end": e})
    asm, _ = ST.build({"blocks": blocks}, infos, 10, "own", "lstsq", seed=0)
    return " > ".join(f"{b['model']}[{b['start']}-{b['end']}]" for b in blocks), asm


def run(quick: bool, params: dict[str, Any], tiny: bool = False) -> Result:
    """Row 7 (``tiny``: a seconds-scale version for the tests). NumPy's BLAS gets torch's thread count, as a
    Snakemake job's OPENBLAS_NUM_THREADS = its threads."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(torch.get_num_threads()):
        return _run(quick or tiny, params, tiny)


def _run(quick: bool, params: dict[str, Any], tiny: bool = False) -> Result:
    from dery import data as D
    from dery import training as TR

    res = Result()
    ft = params["finetune"]
    bs = 8 if tiny else ft["batch_size"]
    lr, wd, ls = ft["lr"], ft.get("weight_decay", 0.05), ft.get("label_smoothing", 0.1)
    warmup = ft.get("warmup_epochs", 0.3)
    # the stage's epoch: ceil(train_images / batch_size) steps (32 for the default); quick: fewer
    steps = 2 if tiny else 10 if quick else -(-params["target"]["train_images"] // bs)
    repeats = 1 if tiny else 4 if quick else 6
    n = steps * bs
    x = D.to_images(probe_uint8(n, seed=3))
    y = torch.arange(n) % 10
    zoo = zoo_models(params, num_classes=10)
    names = [m for m in zoo if m.startswith(("resnet18", "vit"))] or list(zoo)[:2]
    if quick:
        names = names[:1]
    nets = {m: zoo[m] for m in names}
    asm_name, asm = _assembly(params, zoo, tiny)
    nets[f"assembly {asm_name}"] = asm
    vx, vy = x[:bs], y[:bs]  # one validation batch per epoch: fit's own bookkeeping, not the stage's 1000 images

    rows = []
    for name, net in nets.items():
        a, b = copy.deepcopy(net), copy.deepcopy(net)
        t = paired(lambda a=a: plain_loop(a, x, y, bs, lr, wd, ls),
                   lambda b=b: TR.fit(b, x, y, vx, vy, epochs=1, batch_size=bs, lr=lr, weight_decay=wd,
                                      label_smoothing=ls, warmup_epochs=warmup, seed=0), repeats)
        rows.append({"name": name, "plain": t["a"], "fit": t["b"], "ratio": t["ratio"],
                     "params": sum(p.numel() for p in net.parameters())})
    # what the stage's own images/s figure includes: validation on half as many images as it trains on (the default
    # target split: 2000 train, 1000 val), every epoch
    m0 = copy.deepcopy(nets[names[0]])
    _, t_val = timed(lambda: TR.fit(m0, x, y, x[: n // 2], y[: n // 2], epochs=1, batch_size=bs, lr=lr,
                                    weight_decay=wd, label_smoothing=ls, warmup_epochs=warmup, seed=0))
    worst = min(rows, key=lambda r: r["ratio"])
    ips = lambda s: f"{n / s:.0f} images/s"  # noqa: E731
    res.rows.append(Row("7", f"training throughput: `training.fit` vs a plain loop, {len(rows)} networks, batch {bs}, "
                        f"{steps} steps (worst: {worst['name']})", ips(worst["fit"]), ips(worst["plain"]) + " plain",
                        f"{worst['ratio']:.2f}x", f">= {TARGET}x", yes(worst["ratio"] >= TARGET)))
    res.rows.append(Row("7", f"... `fit` with the default's validation share (val = train / 2, each epoch; {names[0]})",
                        f"{n / t_val:.0f} trained images/s", "-", "-", "reported", "-"))
    lines = ["| network | params | plain loop | `training.fit` | fit / plain throughput |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['params'] / 1e6:.2f}M | {fmt_s(r['plain'])} ({ips(r['plain'])}) | {fmt_s(r['fit'])} "
              f"({ips(r['fit'])}) | {r['ratio']:.3f}x |" for r in rows]
    res.notes.append(
        "### Row 7: training throughput\n\n"
        f"One epoch of {n} 32-px images ({steps} steps of {bs}, the default `finetune.batch_size`), random weights, "
        f"10 classes, AdamW lr {lr}, weight decay {wd}, label smoothing {ls}. 'plain' is a hand-written loop "
        "(shuffle, index, forward, loss, backward, step). `training.fit` adds what the stage needs: the seeded "
        "random-crop + flip augmentation per batch, the warm-up + cosine schedule, separate weight-decay groups, a "
        "finite-loss check, the running loss, one validation batch and a copy of the best weights per epoch. CPU "
        f"time, torch with 1 thread; {repeats} pairs (plain, fit) after a warm-up pair, the order alternating; the "
        "ratio is the median of the pairs' ratios (times are medians too, so the columns need not divide exactly); "
        "under the other jobs' load single timings scatter by about 10%.\n\n" + "\n".join(lines))
    return res
