"""Pretrain (or load) one zoo model and save it as safetensors + JSON."""
from __future__ import annotations

import torch

from .. import data as D
from .. import reassembly as R
from .. import tracking as T
from .. import training as TR
from .. import zoo as Z
from ..atomic import write_json
from ._io import _images, _json


def pretrain(spec: dict, splits: str, train_cfg: dict, seed: int, out_ckpt: str, out_metrics: str) -> None:
    split = _json(splits)
    classes = split[f"source_{spec['source']}_classes"]
    ds = D.load_fashion_mnist(split["data_dir"])
    remap = torch.full((10,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    tx, ty = _images(split, f"source_{spec['source']}_train", ds)
    vx, vy = _images(split, f"source_{spec['source']}_val", ds)
    torch.manual_seed(seed)
    model = Z.create(spec["arch"], len(classes), spec.get("kwargs"), spec.get("weights"), spec.get("remap"),
                     spec.get("pretrained", False))
    hist = TR.History()
    if not (spec.get("weights") or spec.get("pretrained")):
        hist = TR.fit(model, tx, remap[ty], vx, remap[vy], epochs=train_cfg["epochs"],
                      batch_size=train_cfg["batch_size"], lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"],
                      label_smoothing=train_cfg["label_smoothing"], warmup_epochs=train_cfg["warmup_epochs"],
                      seed=seed, name=spec["id"], progress=True, resume=out_ckpt + ".resume.pt")
    val_acc = TR.accuracy(model, vx, remap[vy])
    meta = {"id": spec["id"], "arch": spec["arch"], "kwargs": spec.get("kwargs") or {}, "num_classes": len(classes),
            "source": spec["source"], "classes": classes, "val_acc": val_acc, "license": spec.get("license", ""),
            "params": R.count_params(model),
            "pretrained_from": spec.get("weights") or (f"timm hub: {spec['arch']}" if spec.get("pretrained")
                                                       else "trained here")}
    Z.save(model, out_ckpt, meta)
    write_json(out_metrics, T.record(f"pretrain/{spec['id']}", {"stage": "pretrain", "model": spec["id"],
                                                                     "arch": spec["arch"], "source": spec["source"]},
                                       {"train": train_cfg, "kwargs": spec.get("kwargs") or {}},
                                       {"val_acc": val_acc, "params": meta["params"], "seconds": hist.seconds,
                                        "images_per_second": hist.images_per_second},
                                       {"epoch_val_acc": [e["val_acc"] for e in hist.epochs],
                                        "epoch_train_loss": [e["train_loss"] for e in hist.epochs]}))
