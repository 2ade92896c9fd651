"""Fine-tune assemblies (FZ/FT) and the baselines (zoo models, from scratch); test once.

``finetune.device`` / ``finetune.amp`` choose where and in which precision; with ``finetune.processes: N`` each
stage relaunches itself under torchrun (N processes, DDP) and rank 0 writes the outputs. With
``stitching.train_steps`` > 0 an assembly's adapters are first trained alone to their blocks' native inputs
(``dery.stitch_training``); their errors before and after go to the log, the metrics and the artifact's spec.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from .. import data as D
from .. import distributed as DIST
from .. import reassembly as R
from .. import stitch_training as STT
from .. import stitching as ST
from .. import tracking as T
from .. import training as TR
from .. import zoo as Z
from ..atomic import write_json
from ._io import NUM_CLASSES, _images, _infos, _json, spec_seed

log = logging.getLogger("dery")


def _train_eval(model, split: dict, cfg: dict, seed: int, frozen, name: str, resume: str,
                before_fit: Callable[[torch.Tensor, torch.Tensor, torch.device], None] | None = None):
    """Train and test on ``finetune.device`` (every rank under torchrun); the model comes back on the CPU.
    ``before_fit(train_images, val_images, device)`` runs first, on the images and device fine-tuning uses."""
    rt = DIST.setup(cfg.get("device", "auto"), cfg.get("amp", False))
    ds = D.load_fashion_mnist(split["data_dir"])
    tx, ty = _images(split, "target_train", ds)
    vx, vy = _images(split, "target_val", ds)
    if before_fit is not None:
        before_fit(tx, vx, rt.device)
    hist = TR.fit(model, tx, ty, vx, vy, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                  weight_decay=cfg["weight_decay"], label_smoothing=cfg["label_smoothing"],
                  warmup_epochs=cfg["warmup_epochs"], seed=seed, frozen=frozen, name=name, progress=rt.main,
                  resume=resume, runtime=rt)
    test_x, test_y = D.to_images(ds.test_x[: cfg["test_images"]]), torch.as_tensor(ds.test_y[: cfg["test_images"]])
    acc = TR.accuracy(model, test_x, test_y, runtime=rt)
    model.cpu()  # artifacts, ONNX export and MAC counts run on the CPU
    return hist, acc


def _finetune_record(key: str, tags: dict, cfg: dict, hist: TR.History, test_acc: float, extra: dict) -> dict:
    return T.record(key, {"stage": "finetune", **tags, "device": hist.device, "processes": hist.processes}, cfg,
                    {"test_acc": test_acc, "val_acc": hist.best_val, "best_epoch": hist.best_epoch,
                     "trainable_params": hist.trainable_params, "seconds": hist.seconds,
                     "images_per_second": hist.images_per_second, **extra},
                    {"epoch_val_acc": [e["val_acc"] for e in hist.epochs],
                     "epoch_train_loss": [e["train_loss"] for e in hist.epochs]})


def _blocks_text(c: dict) -> str:
    text = " > ".join(f"{b['model']}[{b['start']}-{b['end']}]" for b in c["blocks"])
    # kept with reassembly.single_model: keep, and labelled wherever the blocks are shown
    return text + (f" (= zoo model {c['single_model']} with a new head)" if c.get("single_model") else "")


@DIST.torchrun
def finetune_candidate(ranking_json: str, rank: int, protocol: str, splits: str, ckpt_dir: str, feat_dir: str,
                       cfg: dict, stem: str, init: str, seed: int, out_metrics: str, out_spec: str) -> None:
    doc = _json(ranking_json)
    budget = doc["budget"]["name"]
    key = f"finetune/{budget}/rank{rank}/{protocol}"
    if rank >= len(doc["candidates"]):  # fewer feasible assemblies than top_k: say so, train nothing
        if DIST.is_main():
            _write_skipped_artifact(out_spec, f"budget {budget} has only {len(doc['candidates'])} candidates")
            write_json(out_metrics, {"skip": True, "key": key})
        return
    c = doc["candidates"][rank]
    infos = _infos(sorted({b["model"] for b in c["blocks"]}), ckpt_dir, feat_dir)
    asm, notes = ST.build(c, infos, NUM_CLASSES, stem, init, spec_seed(seed, c["id"]))
    frozen = asm.pretrained_modules() if protocol == "FZ" else []
    split = _json(splits)
    # stitching.train_steps > 0 (the rules put it in cfg only then): fit the adapters to their blocks' native
    # inputs before fine-tuning; absent, nothing below runs and fine-tuning is what it was before the option
    at = cfg.get("adapter_training") or {}
    adapters: list[dict] = []

    def train_adapters(tx: torch.Tensor, vx: torch.Tensor, device: torch.device) -> None:
        adapters.extend(STT.train_adapters(asm, c, infos, tx, at["steps"], at["lr"], at["batch_size"],
                                           spec_seed(seed, c["id"] + "/adapters"), eval_images=vx, device=device))
        for r in adapters:
            log.info("adapter %d -> %s: MSE to the native input on target_val %.4g -> %.4g (R² %.3f -> %.3f), "
                     "%d steps in %.1f s", r["adapter"], r["feeds"], r["mse_before"], r["mse_after"],
                     r["r2_before"], r["r2_after"], r["steps"], r["seconds"])

    hist, acc = _train_eval(asm, split, cfg, seed, frozen, key, out_metrics + ".resume.pt",
                            before_fit=train_adapters if at.get("steps") else None)
    if not DIST.is_main():
        return
    _write_artifact(asm, out_spec, c, infos, ckpt_dir, split, cfg, seed, stem, init,
                    {"budget": budget, "budget_limits": doc["budget"], "rank": rank, "protocol": protocol,
                     "proxy": doc.get("proxy"), "test_acc": acc, "val_acc": hist.best_val,
                     "best_epoch": hist.best_epoch, "trainable_params": hist.trainable_params,
                     **({"adapter_training": adapters} if adapters else {})})
    adapter_metrics = {f"adapter{r['adapter']}_{m}": r[m] for r in adapters
                       for m in ("mse_before", "mse_after", "r2_before", "r2_after")}
    write_json(out_metrics, _finetune_record(key, {"kind": "assembly", "budget": budget, "protocol": protocol,
                                                     "name": f"rank{rank}:{c['id']}", "blocks": _blocks_text(c)},
                                               cfg, hist, acc, {"params": c["params"], "macs": c["macs"],
                                                                "proxy_score": c["proxy_score"], "rank": rank,
                                                                **adapter_metrics}))


def _write_artifact(asm, out_spec: str, c: dict, infos: dict, ckpt_dir: str, split: dict, cfg: dict, seed: int,
                    stem: str, init: str, result: dict) -> None:
    """Weights + spec + model card (+ ONNX, TorchScript) of the fine-tuned assembly: ``dery.load_assembly``
    reads them."""
    from .. import artifacts as A

    sources = {}
    for m, info in infos.items():
        ckpt = Path(ckpt_dir) / f"{m}.safetensors"
        sources[m] = A.source_entry(_json(ckpt.with_suffix(".json")), info.meta, A.sha256_file(ckpt))
    data = {"dataset": "Fashion-MNIST (Xiao et al. 2017; MIT licence, Zalando Research), from " + split["data_dir"],
            "fine_tuned_on": f"{len(split['target_train'])} training images (seeded target_train split, seed {seed}), "
                             "random 4-px-padded crops and horizontal flips",
            "model_selection": f"the epoch with the best accuracy on {len(split['target_val'])} held-out training "
                               "images (target_val)",
            "tested_on": f"the first {cfg['test_images']} images of the Fashion-MNIST test set, once"}
    info = {**{k: v for k, v in c.items() if k != "blocks"}, **result, "data": data, "training": {**cfg, "seed": seed}}
    reference = D.load_fashion_mnist(split["data_dir"]).test_x[: A.REFERENCE_IMAGES]
    A.save_assembly(asm, out_spec, blocks=c["blocks"], sources=sources, stem=stem, adapter_init=init, info=info,
                    reference_images=reference)


def _write_skipped_artifact(out_spec: str, why: str) -> None:
    """A rank with no candidate still gets its declared files: a spec and card that say why, and no tensors."""
    from safetensors.torch import save_file

    from .. import artifacts as A

    files = A.paths(out_spec)
    save_file({}, str(files.weights))
    write_json(out_spec, {"skipped": why})
    files.card.write_text(f"# No assembly at this rank\n\nNothing was fine-tuned: {why}.\n")


@DIST.torchrun
def finetune_zoo(ckpt: str, splits: str, cfg: dict, seed: int, out_metrics: str) -> None:
    model, meta = Z.load(ckpt)
    torch.manual_seed(seed)
    model.reset_classifier(NUM_CLASSES)
    macs = R.count_macs(model, 3, D.IMAGE_SIZE, D.IMAGE_SIZE)
    hist, acc = _train_eval(model, _json(splits), cfg, seed, [], f"zoo/{meta['id']}", out_metrics + ".resume.pt")
    if not DIST.is_main():
        return
    write_json(out_metrics, _finetune_record(f"finetune/zoo/{meta['id']}/FT",
                                               {"kind": "zoo", "budget": "zoo", "protocol": "FT", "name": meta["id"],
                                                "blocks": f"{meta['arch']} ({meta['source']})"},
                                               cfg, hist, acc, {"params": R.count_params(model), "macs": macs}))


@DIST.torchrun
def finetune_scratch(ranking_json: str, splits: str, ckpt_dir: str, feat_dir: str, zoo_specs: dict, cfg: dict,
                     stem: str, seed: int, out_metrics: str, index: int = 0) -> None:
    """The architecture of the ranking's candidate ``index`` (the best-ranked by default), every weight freshly
    initialised, trained the same way (FT)."""
    doc = _json(ranking_json)
    c = doc["candidates"][index]
    budget = doc["budget"]["name"]
    infos = _infos(sorted({b["model"] for b in c["blocks"]}), ckpt_dir, feat_dir, with_feats=False)
    torch.manual_seed(spec_seed(seed + 1, c["id"]))
    for m, info in infos.items():
        info.model = Z.create(zoo_specs[m]["arch"], info.model.num_classes, zoo_specs[m].get("kwargs")).eval()
    asm, _ = ST.build(c, infos, NUM_CLASSES, stem, "random", spec_seed(seed + 1, c["id"]))
    hist, acc = _train_eval(asm, _json(splits), cfg, seed, [], f"scratch/{budget}", out_metrics + ".resume.pt")
    if not DIST.is_main():
        return
    write_json(out_metrics, _finetune_record(f"finetune/{budget}/scratch/FT",
                                               {"kind": "scratch", "budget": budget, "protocol": "FT",
                                                "name": f"scratch:{c['id']}", "blocks": _blocks_text(c)},
                                               cfg, hist, acc, {"params": c["params"], "macs": c["macs"]}))
