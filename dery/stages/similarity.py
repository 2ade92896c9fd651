"""Linear CKA between every node of two models."""
from __future__ import annotations

import numpy as np

from .. import similarity as S
from ._io import _feats, _json, _save_npz


def similarity(npz_a: str, npz_b: str, json_a: str, json_b: str, out: str) -> None:
    cka = S.linear_cka_matrix(_feats(npz_a), _feats(npz_b))
    _save_npz(out, cka=cka, rows=np.array(_json(json_a)["names"]), cols=np.array(_json(json_b)["names"]))
