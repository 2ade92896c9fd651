"""Linear CKA between every node of one model and every node of another.

Biased linear CKA (Kornblith et al. 2019), as the paper: for column-centred X (n x p),
Y (n x q), CKA = ||Xᵀ Y||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F), equal to the Gram-matrix form
<HKH, HLH>_F / (||HKH||_F ||HLH||_F) with K = XXᵀ, L = YYᵀ. We compute it on all probe
images at once (the authors average per-batch CKA over batches of 2048 instead).

Two exact routes, picked by size: stacked Gram matrices (cost ~ n² per node) when the
probe set is small, feature-space cross products (cost ~ n·p·q, memory independent of n)
when it is large. Both are batched matrix products, no Python loop over node pairs.
"""
from __future__ import annotations

import numpy as np
import torch


def _centre(feats: list[np.ndarray]) -> list[torch.Tensor]:
    out = []
    for f in feats:
        t = torch.as_tensor(f, dtype=torch.float64)
        out.append(t - t.mean(0, keepdim=True))
    return out


def _gram_route(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    ga = torch.stack([x @ x.T for x in a]).flatten(1)  # [La, n²]
    gb = torch.stack([y @ y.T for y in b]).flatten(1)
    return (ga @ gb.T) / torch.outer(ga.norm(dim=1), gb.norm(dim=1))


def _feature_route(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    xa, xb = torch.cat(a, 1), torch.cat(b, 1)  # [n, ΣCa], [n, ΣCb]
    seg_a = torch.repeat_interleave(torch.arange(len(a)), torch.tensor([x.shape[1] for x in a]))
    seg_b = torch.repeat_interleave(torch.arange(len(b)), torch.tensor([y.shape[1] for y in b]))
    pa = torch.nn.functional.one_hot(seg_a, len(a)).to(xa.dtype)  # [ΣCa, La]
    pb = torch.nn.functional.one_hot(seg_b, len(b)).to(xb.dtype)
    cross = pa.T @ (xa.T @ xb).square() @ pb  # [La, Lb] = ||Xᵢᵀ Yⱼ||²
    self_a = torch.stack([(x.T @ x).norm() for x in a])
    self_b = torch.stack([(y.T @ y).norm() for y in b])
    return cross / torch.outer(self_a, self_b)


def linear_cka_matrix(feats_a: list[np.ndarray], feats_b: list[np.ndarray]) -> np.ndarray:
    """CKA[i, j] between node i of model A and node j of model B (features: [n, C])."""
    n = feats_a[0].shape[0]
    if any(f.shape[0] != n for f in feats_a + feats_b):
        raise ValueError("all feature matrices must hold the same probe images (same number of rows)")
    a, b = _centre(feats_a), _centre(feats_b)
    width = max(sum(x.shape[1] for x in a), sum(y.shape[1] for y in b))
    cka = _gram_route(a, b) if n * n <= 4 * width * width else _feature_route(a, b)
    return cka.clamp_(0.0, 1.0).numpy()


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Plain single-pair linear CKA, for tests and readers."""
    return float(linear_cka_matrix([x], [y])[0, 0])
