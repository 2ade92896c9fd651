"""Training-free proxies that score an assembled network before any fine-tuning.

Every proxy is ``fn(model, batches, labels) -> float`` (higher = predicted better), registered
in ``PROXIES``. ``batches`` is a list of image tensors from the target TRAIN split, ``labels``
the matching list of class tensors (label-free proxies ignore them; nothing here ever sees
test labels). ``FEATURE_PROXIES`` only need the network's final features (the pooled input
of the classifier head, eval mode), so the proxy stage computes those once per candidate and
calls the ``*_score(features, labels)`` functions directly. ``PROXIES`` is exactly the pipeline's set (the
committed results record and hash its scores); the benchmark's additions below are registered beside it, in
``EXTRA_PROXIES`` / ``EXTRA_FEATURE_SCORES``, and everything together in ``ALL_PROXIES`` / ``ALL_FEATURE_SCORES``.

- ``naswot`` (Mellor et al., ICML 2021), the paper's choice. For a batch of B images, every
  activation module's *input* is binarised (x > 0 is the code of the unit);
  K = sum over modules of C Cᵀ + (1 - C)(1 - C)ᵀ, i.e. per pair of images the number of units
  on which their codes agree (N_A minus the Hamming distance). The score is log|det K|
  (``slogdet`` in float64), averaged over batches. As the NASWOT reference we hook activation
  layers only (DeRy's code also hooked Linear/attention/dropout outputs) and do not normalise
  by the number of units (their issue #20). Train mode (batch statistics), as both codes.
- ``kta``: centred kernel-target alignment (Cristianini et al. 2002; Cortes et al. 2012) of the
  linear kernel of the final features with the label kernel YYᵀ, i.e. linear CKA between the
  features and the one-hot labels. 1 when the features are the one-hot labels; invariant to
  isotropic scaling, rotations and shifts of the features.
- ``logme`` (You et al., ICML 2021): the maximum log marginal likelihood (evidence) per sample
  of a Bayesian linear model from the final features to each one-hot label column, averaged
  over classes; alpha, beta by MacKay's fixed point on one SVD (the reference ``thuml/LogME``
  ``_fit_fixed_point``), with the log-determinant also counting the D - rank zero eigenvalues.
- ``linear_probe``: held-out accuracy of a multinomial logistic regression on the standardised
  final features, fixed budget (two seeded stratified folds, L-BFGS for a fixed number of
  iterations, fixed L2), averaged over the folds.
- ``jacov`` (Mellor et al. 2020, v1 of NASWOT; DeRy's ``zero_nas/jacov``): the correlation
  matrix of the input-Jacobians of the summed outputs over one batch (the first: the reference
  scores a single minibatch, and a backward pass per batch would double the proxy stage's
  cost); score -Σ log(λ + k) + 1/(λ + k) over its eigenvalues, k = 1e-5. Train mode.
- ``synflow`` (Tanaka et al., NeurIPS 2020), as the zero-cost-proxies reference (``foresight``'s ``synflow``,
  ``bn=False``): a copy of the network in float64 with every floating state entry replaced by its absolute
  value, normalisation removed (the reference makes each BatchNorm's forward the identity, statistics and
  affine parameters alike; we do the same to GroupNorm/LayerNorm/RMSNorm, which rescale by data statistics
  just as BN does and so break the path sum R = 1ᵀ∏|W|1 that SynFlow measures; timm's norm+act layers keep
  their activation), one all-ones input, R = Σ output, score Σ |θ ⊙ ∂R/∂θ| over the weights of Conv2d and
  Linear layers. We report its log (monotone, so rankings and Kendall τ are the reference's; the sum grows
  exponentially with depth) and run in eval mode (dropout and drop-path off, so the score is deterministic;
  the reference's networks have neither).
- ``sfda``, ``ncti``: the feature scores of ``dery.transferability`` (SFDA, Shao et al., ECCV 2022: Fisher
  space with the reference's shrinkage, then the ConfMix self-challenge; NCTI, Wang et al., ICCV 2023: PCA-64 +
  shrunk LDA, its ETF / nearest-centre / variability-collapse terms); every constant is in those docstrings. One
  candidate's NCTI is the raw etf + ncc - vc: the reference min-max scales each term over the compared models,
  which ``transferability.ncti_combine`` does for a set.
- ``meco`` (Jiang et al., NeurIPS 2023), as the reference's ``meco`` (``HamsterMimi/MeCo``, ``NAS_Bench_201.py``):
  the correlation matrices of ONE training image's maps (the first of the first batch, ``data_output[0]`` as the
  reference's hook), in train mode as the freshly built reference networks. A forward hook on every module
  (``named_modules``: containers and the root too, so a container counts its last child's map again) takes the
  image's output [R, ...] as R rows (dim 1 after the batch: the channels of an NCHW map, the tokens of an
  [N, L, C] sequence, the image rows of a channels-last NHWC map), their correlation matrix (a constant row
  correlates 0: the reference's NaN -> 0) and its smallest eigenvalue; the score sums them. Deviations: the whole
  first batch goes through the network, so train-mode BatchNorm uses its statistics (the reference forwards the
  one image alone, which a train-mode BatchNorm refuses once a map is 1x1, as 32-px inputs make the zoo's late
  CNN stages; given a batch of one image this is the reference); float64 ``eigvalsh`` for float32 ``eig``; a
  matrix of rank < R (fewer than R + 1 positions: a Linear's [K] output, a 1x1 map) scores its exact 0 without
  an eigensolver (the reference gets round-off, ~1e-7); outputs that are not tensors are skipped and a
  non-finite map fails the proxy. Not ``meco_opt`` (8 random channels x C/8).
- ``zico`` (Li et al., ICLR 2023), as the reference (``SLDGroup/ZiCo``, ``compute_zico.py``): train mode, one
  cross-entropy backward per batch, every given batch (the reference's search takes 2; a single batch is split in
  two halves, as the MeCo repo's ZiCo, since the statistics are over batches), the weight gradients of every
  Conv2d and Linear; per layer log Σ_θ mean_b|g| / std_b(g) over the entries whose std (population, ddof 0) is
  not 0, a layer whose sum is 0 skipped; the score sums the layers. Gradients by ``autograd.grad``, so the
  model's ``.grad`` and ``requires_grad`` flags stay as they were; statistics in float64 (the reference: float32);
  a layer the loss does not reach is skipped (the reference would fail).
- ``params`` and ``macs``, the naive baselines (bigger predicts better, as in the zero-cost-proxy literature):
  the number of trainable (``requires_grad``) parameters, and multiply-accumulates of one eval-mode forward of
  one image at the batch's size (``FlopCounterMode`` FLOPs / 2: matmuls, convolutions, attention; norms and
  activations free).
- ``low_fidelity`` (not a ``fn(model, batches, labels)`` proxy, so in no registry): validation accuracy of a deep
  copy after ``steps`` AdamW steps (torch defaults but ``lr``: betas 0.9/0.999, eps 1e-8, weight decay 0.01) of
  full fine-tuning with cross-entropy on the logits, the train batches cycled, under ``seed`` (bitwise repeatable
  on CPU; on CUDA as far as the caller's cuDNN settings make it).
"""
from __future__ import annotations

import contextlib
import copy
import math
import types

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# the feature scores live in dery.transferability; dery.proxy stays their import path (re-exported)
from .transferability import (  # noqa: F401
    _labels,
    _need_labels,
    _one_hot,
    _stratified_folds,
    _svd,
    dominant_eigenvalue,
    final_features,
    kta_score,
    linear_probe_score,
    logme_evidence,
    logme_fit,
    logme_score,
    ncti_combine,
    ncti_score,
    ncti_terms,
    sfda_score,
    sfda_shrinkage,
)

ACTIVATIONS = ("ReLU", "ReLU6", "LeakyReLU", "GELU", "GELUTanh", "QuickGELU", "SiLU", "Swish", "Hardswish",
               "HardSwish", "HardSwishMe", "Mish", "ELU", "SELU", "PReLU", "CELU")


# ------------------------------------------------------------------------------------- NASWOT

def activation_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ in ACTIVATIONS]


def naswot_kernel(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    k = torch.zeros(n, n, dtype=torch.float64)

    def hook(mod, inp):
        c = (inp[0].detach().reshape(n, -1) > 0).double()
        k.add_(c @ c.T).add_((1 - c) @ (1 - c).T)

    handles = [m.register_forward_pre_hook(hook) for m in activation_modules(model)]
    if not handles:
        raise ValueError("NASWOT needs activation layers and this network has none")
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return k


@contextlib.contextmanager
def _train_mode_untouched(model: nn.Module):
    """Train mode (batch statistics) for the duration, then the previous mode and the BatchNorm
    running statistics restored: a proxy must not change the network it scores."""
    was_training = model.training
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for k, v in model.named_buffers():
                if k in buffers:
                    v.copy_(buffers[k])


def naswot(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    with _train_mode_untouched(model):
        scores = [float(torch.linalg.slogdet(naswot_kernel(model, x))[1]) for x in batches]
    score = float(np.mean(scores))
    if not np.isfinite(score):
        raise FloatingPointError("NASWOT score is not finite (a singular kernel: identical codes for two images)")
    return score


# ----------------------------------------------------------------- model-level wrappers

def kta(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    return kta_score(final_features(model, batches), _need_labels("kta", labels))


def logme(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    return logme_score(final_features(model, batches), _need_labels("logme", labels))


def linear_probe(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    return linear_probe_score(final_features(model, batches), _need_labels("linear_probe", labels))


def sfda(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    return sfda_score(final_features(model, batches), _need_labels("sfda", labels))


def ncti(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    return ncti_score(final_features(model, batches), _need_labels("ncti", labels))


# -------------------------------------------------------------------------------- JacobCov

def jacov_from_jacobians(jac: np.ndarray, k: float = 1e-5) -> float:
    """-Σ [log(λ + k) + 1/(λ + k)] over the eigenvalues λ of the correlation matrix of the rows."""
    corr = np.corrcoef(np.asarray(jac, dtype=np.float64).reshape(len(jac), -1))
    corr = np.nan_to_num(corr, nan=0.0)
    v = np.linalg.eigvalsh(corr)
    return float(-np.sum(np.log(v + k) + 1.0 / (v + k)))


def jacov(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    scores = []
    with _train_mode_untouched(model):
        for x in batches[:1]:
            x = x.clone().requires_grad_(True)
            (jac,) = torch.autograd.grad(model(x).sum(), x)
            scores.append(jacov_from_jacobians(jac.detach().numpy()))
    return float(np.mean(scores))


# --------------------------------------------------------------------------------- SynFlow

NORMS = tuple(t for t in (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, getattr(nn, "RMSNorm", None))
              if t is not None)


def _no_norm(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A normalisation layer without its normalisation; timm's ``*Act`` norms still apply their drop and act."""
    return self.act(self.drop(x)) if hasattr(self, "act") and hasattr(self, "drop") else x


def synflow(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for v in net.state_dict().values():  # the reference's linearize(): parameters and buffers
            if v.is_floating_point():
                v.abs_()
    for m in net.modules():
        if isinstance(m, NORMS):
            m.forward = types.MethodType(_no_norm, m)
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None  # a deep copy carries the model's own gradients
    net(torch.ones((1, *batches[0].shape[1:]), dtype=torch.float64)).sum().backward()
    total = sum(float((m.weight.detach() * m.weight.grad).abs().sum()) for m in net.modules()
                if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.grad is not None)
    return math.log(total) if total > 0 else float("-inf")


# ------------------------------------------------------------------------------------ MeCo

def min_correlation_eigenvalue(rows: torch.Tensor) -> float:
    """Smallest eigenvalue of the correlation matrix of the rows of [R, P] (a constant row correlates 0)."""
    f = rows.detach().double().reshape(rows.shape[0], -1)
    if not torch.isfinite(f).all():
        raise FloatingPointError("MeCo: a feature map is not finite")
    f = f - f.mean(1, keepdim=True)
    norms = f.norm(dim=1)
    r, p = f.shape
    if p - 1 < r or bool((norms == 0).any()):
        return 0.0  # rank ≤ min(R, P - 1) after centring, or a zero row: a singular PSD matrix, λ_min = 0 exactly
    f = f / norms[:, None]
    return float(torch.linalg.eigvalsh(f @ f.T)[0])


def meco(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    values: list[float] = []

    def hook(mod, inp, out):
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            values.append(min_correlation_eigenvalue(out[0].reshape(out.shape[1], -1)))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with _train_mode_untouched(model), torch.no_grad():
            model(batches[0])  # the hook reads image 0; the rest only feed BatchNorm's statistics
    finally:
        for h in handles:
            h.remove()
    return float(sum(values))


# ------------------------------------------------------------------------------------ ZiCo

@contextlib.contextmanager
def _requiring_grad(tensors: list[torch.Tensor]):
    flags = [t.requires_grad for t in tensors]
    try:
        for t in tensors:
            t.requires_grad_(True)
        yield
    finally:
        for t, f in zip(tensors, flags, strict=True):
            t.requires_grad_(f)


def zico_from_gradients(grads: torch.Tensor) -> float:
    """log Σ mean_b|g| / std_b(g) over the entries of [B, P] with std ≠ 0 (ddof 0); nan when that sum is 0."""
    g = grads.double()
    std = g.std(0, unbiased=False)
    nz = std != 0
    s = float((g.abs().mean(0)[nz] / std[nz]).sum())
    return math.log(s) if s > 0 else float("nan")


def zico(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    if labels is None:
        raise ValueError("the `zico` proxy is label-aware: pass the proxy images' target-train labels")
    pairs = [(x, torch.as_tensor(y).long()) for x, y in zip(batches, labels, strict=True)]
    if len(pairs) == 1:  # ZiCo's statistics are over batches: split a single batch as the MeCo repo's ZiCo does
        (x, y), h = pairs[0], len(pairs[0][0]) // 2
        if h == 0:
            raise ValueError("ZiCo needs two batches, or one of at least two images")
        pairs = [(x[:h], y[:h]), (x[h:], y[h:])]
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError("ZiCo scores the gradients of Conv2d and Linear weights and this network has none")
    weights = [m.weight for m in layers]
    grads: list[list[torch.Tensor]] = [[] for _ in layers]
    with _train_mode_untouched(model), _requiring_grad(weights):
        for x, y in pairs:
            loss = nn.functional.cross_entropy(model(x), y)
            for i, g in enumerate(torch.autograd.grad(loss, weights, allow_unused=True)):
                if g is not None:
                    grads[i].append(g.detach().reshape(-1))
    per_layer = [zico_from_gradients(torch.stack(g)) for g in grads if len(g) == len(pairs)]
    return float(sum(v for v in per_layer if not math.isnan(v)))


# ---------------------------------------------------------------------- naive baselines

def params(model: nn.Module, batches: list[torch.Tensor] | None = None, labels: list[torch.Tensor] | None = None
           ) -> float:
    return float(sum(p.numel() for p in model.parameters() if p.requires_grad))


def macs(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    was_training = model.training
    model.eval()  # and no BatchNorm statistics update
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(batches[0][:1])
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2


# ---------------------------------------------------------------------------- low fidelity

def low_fidelity(model: nn.Module, train_batches: list[torch.Tensor], train_labels: list[torch.Tensor],
                 val_batches: list[torch.Tensor], val_labels: list[torch.Tensor], steps: int, lr: float,
                 seed: int) -> float:
    """Validation accuracy (fraction) of a copy of ``model`` after ``steps`` AdamW steps on the cycled train batches."""
    if steps < 0 or (steps and not train_batches):
        raise ValueError("low_fidelity needs steps >= 0 and, to take a step, train batches")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = copy.deepcopy(model).train()
        for p in net.parameters():
            p.requires_grad_(True)  # full fine-tuning, whatever the original froze
            p.grad = None  # a deep copy carries the model's own gradients
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        for step in range(steps):
            i = step % len(train_batches)
            loss = nn.functional.cross_entropy(net(train_batches[i]), torch.as_tensor(train_labels[i]).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in zip(val_batches, val_labels, strict=True):
                y = torch.as_tensor(y).long()
                correct += int((net(x).argmax(1) == y).sum())
                total += len(y)
    if total == 0:
        raise ValueError("low_fidelity needs validation images")
    return correct / total


PROXIES = {"naswot": naswot, "kta": kta, "logme": logme, "linear_probe": linear_probe, "jacov": jacov,
           "synflow": synflow}
FEATURE_SCORES = {"kta": kta_score, "logme": logme_score, "linear_probe": linear_probe_score}
FEATURE_PROXIES = frozenset(FEATURE_SCORES)  # scored from the final features on the feature images
LABEL_AWARE = frozenset({"kta", "logme", "linear_probe"})

# the proxies added for the stitched-network benchmark, kept out of the registries above: the committed
# pipeline results record (and hash) the scores of exactly PROXIES
EXTRA_PROXIES = {"meco": meco, "zico": zico, "params": params, "macs": macs}
EXTRA_FEATURE_SCORES = {"sfda": sfda_score, "ncti": ncti_score}
ALL_PROXIES = {**PROXIES, **EXTRA_PROXIES, "sfda": sfda, "ncti": ncti}
ALL_FEATURE_SCORES = {**FEATURE_SCORES, **EXTRA_FEATURE_SCORES}
ALL_FEATURE_PROXIES = frozenset(ALL_FEATURE_SCORES)
ALL_LABEL_AWARE = LABEL_AWARE | {"sfda", "ncti", "zico"}
