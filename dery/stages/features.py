"""Extract one model's pooled node features on the probe images."""
from __future__ import annotations

import numpy as np

from .. import data as D
from .. import features as F
from .. import zoo as Z
from ..atomic import write_json
from ._io import _json, _save_npz


def extract_features(ckpt: str, splits: str, probe_images: int, batch_size: int, out_npz: str, out_json: str) -> None:
    split = _json(splits)
    if probe_images > len(split["target_train"]):
        raise D.DataError(f"`features.probe_images` = {probe_images} is larger than the target train split "
                          f"({len(split['target_train'])}); lower it or raise `target.train_images`.")
    model, meta = Z.load(ckpt)
    # the probe images stay uint8 (784 bytes each); each batch is normalised when the model needs it
    raw = D.load_fashion_mnist(split["data_dir"]).train_x[np.asarray(split["target_train"][:probe_images])]
    try:
        nf = F.extract(model, raw, batch_size=batch_size, progress=True, transform=D.to_images)
    except FloatingPointError as exc:
        raise FloatingPointError(f"model `{meta['id']}` ({ckpt}): {exc}") from exc
    tr = nf.trace
    _save_npz(out_npz, **{f"f{i:04d}": f for i, f in enumerate(nf.feats)})
    write_json(out_json, {"model": meta["id"], **F.describe(model, nf, tr), "probe_images": probe_images})
