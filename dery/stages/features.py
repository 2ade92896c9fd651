"""Extract one model's pooled node features on the probe images."""
from __future__ import annotations

from .. import data as D
from .. import features as F
from .. import zoo as Z
from ._io import _images, _json, _save_npz


def extract_features(ckpt: str, splits: str, probe_images: int, batch_size: int, out_npz: str, out_json: str) -> None:
    split = _json(splits)
    if probe_images > len(split["target_train"]):
        raise D.DataError(f"`features.probe_images` = {probe_images} is larger than the target train split "
                          f"({len(split['target_train'])}); lower it or raise `target.train_images`.")
    model, meta = Z.load(ckpt)
    x, _ = _images(split, "target_train", limit=probe_images)
    nf = F.extract(model, x, batch_size=batch_size, progress=True)
    tr = F.trace(model, x[:2])
    _save_npz(out_npz, **{f"f{i:04d}": f for i, f in enumerate(nf.feats)})
    Z.write_json(out_json, {"model": meta["id"], "names": nf.names, "glue": tr.glue, "stem_modules": tr.stem_modules,
                            "in_shapes": [list(s) for s in nf.in_shapes], "out_shapes": [list(s) for s in nf.out_shapes],
                            "fmt": nf.fmt, "num_prefix_tokens": int(getattr(model, "num_prefix_tokens", 0) or 0),
                            "probe_images": probe_images})
