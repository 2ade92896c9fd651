"""Row 2: linear CKA of all node pairs of all model pairs, against the authors' per-node-pair loop;
how the cost grows with models, nodes and probe images; what the paper's zoo would cost."""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from .common import PAPER_ZOO, Result, Row, fmt_s, median_times, pooled_width, yes, zoo_models

TARGET = 20.0
PAPER_IMAGES = 50_000        # ImageNet val, as the authors' feature extraction


def cka_per_pair(x: np.ndarray, y: np.ndarray) -> float:
    """The authors' ``cka_linear_torch`` for one node pair: both Gram matrices, centred, then the ratio."""
    xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    k, l_ = xt @ xt.T, yt @ yt.T

    def centre(g: torch.Tensor) -> torch.Tensor:
        return g - g.mean(0, keepdim=True) - g.mean(1, keepdim=True) + g.mean()

    kc, lc = centre(k), centre(l_)
    return float((kc * lc).sum() / (kc.norm() * lc.norm()))


def loop_matrix(fa: list[np.ndarray], fb: list[np.ndarray]) -> np.ndarray:
    return np.array([[cka_per_pair(x, y) for y in fb] for x in fa])


def widths_of(model: torch.nn.Module, image: int) -> list[int]:
    """Pooled feature width of the stem output and of every node (what the features stage stores)."""
    from dery import features as F

    tr = F.trace(model, torch.zeros(2, 3, image, image))
    fmts = [F.token_format(model, s) for s in tr.out_shapes]
    return [pooled_width(tr.in_shapes[0], F.token_format(model, tr.in_shapes[0]))] + \
        [pooled_width(s, f) for s, f in zip(tr.out_shapes, fmts, strict=True)]


def paper_widths() -> dict[str, list[int]]:
    """Node widths of the paper's 24 models at 224 px, traced on PyTorch's meta device (no weights, no memory)."""
    import timm

    out, cache = {}, {}
    for name, _, arch in PAPER_ZOO:
        if arch not in cache:
            with torch.device("meta"):
                cache[arch] = widths_of(timm.create_model(arch, num_classes=10).eval(), 224)
        out[name] = cache[arch]
    return out


def synthetic(widths: list[int], n: int, rng: np.random.Generator, latent: np.ndarray) -> list[np.ndarray]:
    """Pooled-feature stand-ins: a shared latent mixed into each node plus noise (float32, as stored)."""
    return [(latent[:n] @ rng.normal(size=(latent.shape[1], c)) + rng.normal(size=(n, c))).astype(np.float32)
            for c in widths]


def macs_of(wa: list[int], wb: list[int], n: int) -> int:
    from dery.similarity import route_costs

    return min(route_costs(wa, wb, n))


def run(quick: bool, params: dict[str, Any]) -> Result:
    from dery.similarity import linear_cka_all, linear_cka_matrix

    res = Result()
    rng = np.random.default_rng(0)
    n = int(params.get("features", {}).get("probe_images", 500))
    widths = {k: widths_of(m, 32) for k, m in zoo_models(params).items()}
    names = sorted(widths)
    latent = rng.normal(size=(8000, 16))
    feats = {k: synthetic(widths[k], n, rng, latent) for k in names}
    pairs = list(itertools.combinations_with_replacement(names, 2))
    per_pair = lambda: [linear_cka_matrix(feats[a], feats[b]) for a, b in pairs]  # noqa: E731
    at_once = lambda: linear_cka_all(feats, pairs)  # noqa: E731
    slow = lambda: [loop_matrix(feats[a], feats[b]) for a, b in pairs]  # noqa: E731
    t = median_times({"all": at_once, "pair": per_pair, "loop": slow}, 1 if quick else 3, warmup=False)
    want = slow()
    diff = max(max(float(np.abs(x - y).max()) for x, y in zip(per_pair(), want, strict=True)),
               max(float(np.abs(at_once()[p] - y).max()) for p, y in zip(pairs, want, strict=True)))
    node_pairs = sum(len(feats[a]) * len(feats[b]) for a, b in pairs)
    res.rows.append(Row("2", f"similarity: all {node_pairs} node pairs of {len(pairs)} model pairs "
                        f"({len(names)} models), {n} images, in one call (`linear_cka_all`)",
                        fmt_s(t["all"]), f"{fmt_s(t['loop'])} per-node-pair loop (the authors'); max |diff| {diff:.1e}",
                        f"{t['loop'] / t['all']:.0f}x faster", f">= {TARGET:.0f}x, identical to 1e-6",
                        yes(t["loop"] / t["all"] >= TARGET and diff <= 1e-6)))
    res.rows.append(Row("2", "... one model pair per call (`linear_cka_matrix`, how the Snakemake jobs run it)",
                        fmt_s(t["pair"]), fmt_s(t["loop"]), f"{t['loop'] / t['pair']:.0f}x faster",
                        f">= {TARGET:.0f}x", yes(t["loop"] / t["pair"] >= TARGET)))

    # ---- scaling: one pair, vary probe images / nodes per model / models
    wa, wb = widths[names[0]], widths[names[-1]]
    ns = [250, 500, 1000, 2000] + ([] if quick else [4000, 8000])
    by_n = []
    for m in ns:
        fa, fb = synthetic(wa, m, rng, latent), synthetic(wb, m, rng, latent)
        by_n.append(median_times({"x": lambda fa=fa, fb=fb: linear_cka_matrix(fa, fb)}, 3)["x"])
    nodes = [4, 8, 16] + ([] if quick else [32])
    by_l = []
    for L in nodes:
        fa = synthetic([256] * L, n, rng, latent)
        by_l.append(median_times({"x": lambda fa=fa: linear_cka_matrix(fa, fa)}, 3)["x"])
    by_m = []
    models_axis = list(range(2, len(names) + 1))
    for M in models_axis:
        sub = list(itertools.combinations_with_replacement(names[:M], 2))
        by_m.append(median_times({"x": lambda sub=sub: [linear_cka_matrix(feats[a], feats[b]) for a, b in sub]},
                                 1)["x"])

    def slope(xs: list[float], ys: list[float]) -> float:
        return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])

    # ---- the paper's zoo: multiply-adds of the route dery picks, at the rate measured here on a real pair
    pw = paper_widths()
    zoo_pairs = list(itertools.combinations_with_replacement(sorted(pw), 2))
    macs = sum(macs_of(pw[a], pw[b], PAPER_IMAGES) for a, b in zoo_pairs)
    big = 2000 if quick else 8000
    fa, fb = synthetic(wa, big, rng, latent), synthetic(wb, big, rng, latent)
    rate = macs_of(wa, wb, big) / median_times({"x": lambda: linear_cka_matrix(fa, fb)}, 3)["x"]
    thr = _throughput(quick)
    widest = max(sum(w) for w in pw.values())
    mem = 2 * PAPER_IMAGES * widest * 8 + widest * widest * 8
    gpu_nominal = 67e12 / 2   # H100 SXM FP64 tensor-core peak, 67 TFLOP/s = 33.5 T multiply-adds/s (datasheet)
    res.rows.append(Row("2", f"similarity, paper zoo: {len(zoo_pairs)} model pairs, "
                        f"{min(map(len, pw.values()))}-{max(map(len, pw.values()))} nodes, {PAPER_IMAGES} images",
                        f"~{fmt_s(macs / rate)} on this CPU (1 thread, extrapolated)",
                        f"~{fmt_s(macs / gpu_nominal)} at an H100's nominal FP64 peak (estimate, not measured)",
                        f"{macs / 1e12:.0f} T multiply-adds", "reported", "-"))
    res.notes.append(
        "### Row 2: similarity scaling\n\n"
        f"One pair ({names[0]} vs {names[-1]}), probe images {ns}: {', '.join(fmt_s(x) for x in by_n)} "
        f"(log-log slope {slope(ns, by_n):.2f}; the Gram route costs ~n², the feature route ~n, dery takes the one "
        f"with fewer multiply-adds). Nodes per model {nodes} (256 channels each, self pair, {n} images): "
        f"{', '.join(fmt_s(x) for x in by_l)} (slope {slope(nodes, by_l):.2f}: ~L for the Gram matrices plus ~L² for "
        f"the node-pair products). Models {models_axis} (all pairs incl. self, {n} images): "
        f"{', '.join(fmt_s(x) for x in by_m)} (pairs grow as M(M+1)/2; one Snakemake job per pair).\n\n"
        f"Paper zoo estimate: {len(pw)} models, node widths traced from timm at 224 px (meta device); per pair the "
        f"multiply-adds of the cheaper route at {PAPER_IMAGES} images, summed: {macs / 1e12:.0f} T. Rate measured on "
        f"a real pair at {big} images: {rate / 1e9:.1f} G multiply-adds/s (a bare float64 GEMM reaches "
        f"{thr / 1e9:.1f} G/s on this core: the CKA stage runs at {rate / thr:.0%} of it), so ~{fmt_s(macs / rate)} "
        f"on one core of this CPU; ~{fmt_s(macs / gpu_nominal)} at an H100's nominal FP64 peak (a datasheet "
        f"estimate, no GPU in this run). Memory per pair on the feature route: both centred feature matrices plus "
        f"the cross product, up to {mem / 2**30:.0f} GiB for the widest model (sum of C = {widest}); at that scale "
        f"X^T Y would have to be accumulated over chunks of images.")
    return res


def _throughput(quick: bool) -> float:
    """Float64 multiply-adds per second of a GEMM shaped like the feature route's cross product."""
    a = torch.randn(2000, 1024, dtype=torch.float64)
    b = torch.randn(2000, 1024, dtype=torch.float64)
    t = median_times({"x": lambda: a.T @ b}, 3 if quick else 5)["x"]
    return 2000 * 1024 * 1024 / t

