"""Split the data: target train/val and each source's pretraining images."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import data as D
from ..atomic import write_json


def split_data(out: str, data_cfg: dict, sources: dict, per_source: int, val_fraction: float, target: dict,
               seed: int) -> None:
    pool_size = D.TARGET_POOL
    if data_cfg.get("dataset"):  # an ImageFolder dataset, converted once to the idx files read below
        from .. import datasets as DS

        folder = DS.pipeline_folder(data_cfg["dataset"], data_cfg.get("download_dir"))
        pool_size = target["train_images"] + target["val_images"]  # a small dataset: sources get the rest
    else:
        folder = D.find_fashion_mnist(data_cfg.get("root"), data_cfg.get("download_dir"))
    ds = D.load_fashion_mnist(folder)
    need = target["train_images"] + target["val_images"]
    if need > min(pool_size, len(ds.train_y)):
        raise D.DataError(f"target train + val = {need} images exceeds the {min(pool_size, len(ds.train_y))}-image "
                          "target pool; lower them.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds.train_y))
    pool, rest = order[:pool_size], order[pool_size:]
    split: dict[str, Any] = {"data_dir": str(Path(folder).resolve()),
                             "target_train": pool[: target["train_images"]].tolist(),
                             "target_val": pool[target["train_images"]: need].tolist()}
    for name, classes in sources.items():
        mine = rest[np.isin(ds.train_y[rest], classes)]
        if len(mine) < per_source:
            raise D.DataError(f"source {name!r} (classes {classes}) has {len(mine)} images; "
                              f"`zoo_training.images_per_source` = {per_source} is more; lower it.")
        n_val = max(1, int(round(per_source * val_fraction)))
        split[f"source_{name}_train"] = mine[: per_source - n_val].tolist()
        split[f"source_{name}_val"] = mine[per_source - n_val: per_source].tolist()
        split[f"source_{name}_classes"] = list(classes)
    write_json(out, split)
