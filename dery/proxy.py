"""Training-free proxies that score an assembled network before any fine-tuning.

Every proxy is ``fn(model, batches, labels) -> float`` (higher = predicted better), registered
in ``PROXIES``. ``batches`` is a list of image tensors from the target TRAIN split, ``labels``
the matching list of class tensors (label-free proxies ignore them; nothing here ever sees
test labels). ``FEATURE_PROXIES`` only need the network's final features (the pooled input
of the classifier head, eval mode), so the proxy stage computes those once per candidate and
calls the ``*_score(features, labels)`` functions directly.

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
"""
from __future__ import annotations

import contextlib
import copy
import math
import types

import numpy as np
import torch
from torch import nn

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


# ------------------------------------------------------------------------- final features

@torch.no_grad()
def final_features(model: nn.Module, batches: list[torch.Tensor]) -> np.ndarray:
    """Pooled input of the classifier head, eval mode, float64 [N, D].

    For a ``stitching.Assembly`` (``forward_features`` and ``head.port``) the head's own pooling
    is used; any other module contributes its flattened output.
    """
    was_training = model.training
    model.eval()
    try:
        outs = []
        for x in batches:
            if hasattr(model, "forward_features") and hasattr(getattr(model, "head", None), "port"):
                from .features import pool

                outs.append(pool(model.forward_features(x), model.head.port.fmt))
            else:
                outs.append(model(x).reshape(len(x), -1))
    finally:
        model.train(was_training)
    return torch.cat(outs).double().numpy()


def _labels(labels) -> np.ndarray:
    if isinstance(labels, (list, tuple)):
        labels = torch.cat([torch.as_tensor(t) for t in labels]) if labels else torch.zeros(0)
    return np.asarray(labels, dtype=np.int64).reshape(-1)


def _one_hot(y: np.ndarray) -> np.ndarray:
    classes = np.unique(y)
    return (y[:, None] == classes[None, :]).astype(np.float64)


def _need_labels(name: str, labels) -> np.ndarray:
    if labels is None:
        raise ValueError(f"the `{name}` proxy is label-aware: pass the proxy images' target-train labels")
    return _labels(labels)


# ------------------------------------------------------------------------------------ KTA

def kta_score(features: np.ndarray, labels) -> float:
    """Centred alignment <HKH, HLH>_F / (||HKH||_F ||HLH||_F), K = FFᵀ, L = YYᵀ (feature-space form)."""
    y = _labels(labels)
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(0, keepdims=True)
    t = _one_hot(y)
    t = t - t.mean(0, keepdims=True)
    cross = np.linalg.norm(f.T @ t) ** 2
    denom = np.linalg.norm(f.T @ f) * np.linalg.norm(t.T @ t)
    return float(cross / denom) if denom > 0 else 0.0


# ---------------------------------------------------------------------------------- LogME

def logme_evidence(sigma: np.ndarray, x: np.ndarray, y_sq: float, n: int, d: int, alpha: float, beta: float) -> float:
    """Log evidence of y ~ N(0, FFᵀ/alpha + I/beta) from the SVD of F (sigma = squared singular
    values, x = Uᵀy, y_sq = ||y||²): the closed form at the posterior mean m."""
    t = alpha / beta
    m2 = float(np.sum(sigma * x**2 / (t + sigma) ** 2))
    res2 = float(np.sum(x**2 / (1 + sigma / t) ** 2) + (y_sq - np.sum(x**2)))
    logdet = float(np.sum(np.log(alpha + beta * sigma)) + (d - len(sigma)) * math.log(alpha))
    return (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - logdet / 2 - beta / 2 * res2 - alpha / 2 * m2
            - n / 2 * math.log(2 * math.pi))


def _svd(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and squared singular values of F, numerically zero ones dropped."""
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max() * 1e-10 if s.size and s.max() > 0 else np.zeros_like(s, dtype=bool)
    return u[:, keep], s[keep] ** 2


def logme_fit(f: np.ndarray, y: np.ndarray, iters: int = 100, tol: float = 1e-6,
              svd: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float, float]:
    """Maximise the evidence of one target column y over (alpha, beta); returns (evidence, alpha, beta)."""
    n, d = f.shape
    u, sigma = svd if svd is not None else _svd(f)
    x = u.T @ y
    y_sq = float(y @ y)
    alpha, beta = 1.0, 1.0
    for _ in range(iters):
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))
        m2 = float(np.sum(sigma * x**2 / (t + sigma) ** 2))
        res2 = float(np.sum(x**2 / (1 + sigma / t) ** 2) + (y_sq - np.sum(x**2)))
        alpha = max(gamma / max(m2, 1e-12), 1e-12)
        beta = max((n - gamma) / max(res2, 1e-12), 1e-12)
        if abs(alpha / beta - t) / t < tol:
            break
    return logme_evidence(sigma, x, y_sq, n, d, alpha, beta), alpha, beta


def logme_score(features: np.ndarray, labels) -> float:
    """Mean over classes of the maximum evidence per sample (higher = features explain the labels)."""
    y = _labels(labels)
    f = np.asarray(features, dtype=np.float64)
    n = len(f)
    t = _one_hot(y)
    svd = _svd(f)
    return float(np.mean([logme_fit(f, t[:, c], svd=svd)[0] / n for c in range(t.shape[1])]))


# ---------------------------------------------------------------------------- linear probe

def _stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    folds = [[] for _ in range(k)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        for i, j in enumerate(idx):
            folds[i % k].append(j)
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in folds]


def linear_probe_score(features: np.ndarray, labels, folds: int = 2, iters: int = 50, l2: float = 1e-3,
                       seed: int = 0) -> float:
    """Held-out accuracy of softmax regression on standardised features, averaged over folds."""
    y = _labels(labels)
    f = np.asarray(features, dtype=np.float64)
    classes, y_idx = np.unique(y, return_inverse=True)
    accs = []
    for _k, test in enumerate(_stratified_folds(y_idx, folds, seed)):
        train = np.setdiff1d(np.arange(len(y)), test)
        mu, sd = f[train].mean(0), f[train].std(0) + 1e-8
        xtr = torch.as_tensor((f[train] - mu) / sd)
        xte = torch.as_tensor((f[test] - mu) / sd)
        ytr = torch.as_tensor(y_idx[train])
        w = torch.zeros(f.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
        b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=10, line_search_fn="strong_wolfe")

        def closure(opt=opt, xtr=xtr, w=w, b=b, ytr=ytr):   # bound now: opt.step calls it in this fold
            opt.zero_grad()
            loss = nn.functional.cross_entropy(xtr @ w + b, ytr) + l2 / 2 * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            pred = (xte @ w + b).argmax(1).numpy()
        accs.append(float(np.mean(pred == y_idx[test])))
    return float(np.mean(accs))


# ----------------------------------------------------------------- model-level wrappers

def kta(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    return kta_score(final_features(model, batches), _need_labels("kta", labels))


def logme(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    return logme_score(final_features(model, batches), _need_labels("logme", labels))


def linear_probe(model: nn.Module, batches: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> float:
    return linear_probe_score(final_features(model, batches), _need_labels("linear_probe", labels))


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


PROXIES = {"naswot": naswot, "kta": kta, "logme": logme, "linear_probe": linear_probe, "jacov": jacov,
           "synflow": synflow}
FEATURE_SCORES = {"kta": kta_score, "logme": logme_score, "linear_probe": linear_probe_score}
FEATURE_PROXIES = frozenset(FEATURE_SCORES)  # scored from the final features on the feature images
LABEL_AWARE = frozenset({"kta", "logme", "linear_probe"})
