"""Transferability scores: how well a network's final features fit the target labels, before any training.

Every score is ``*_score(features, labels) -> float`` (higher = predicted better) on the float64
final features [N, D] that ``final_features`` computes once per candidate; ``dery.proxy`` wraps
each as a model-level proxy and re-exports everything here (``dery.proxy`` is the import path the
pipeline and the tests use). KTA, LogME and the linear probe are described in ``dery.proxy``'s
docstring; SFDA and NCTI, with every constant they take from their references, below.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import linalg
from torch import nn

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



# ------------------------------------------------------------------ shared Fisher-space pieces

def _class_index(labels) -> tuple[np.ndarray, int]:
    """Labels as 0..C-1 (the references index classes by label value, so they assume that form)."""
    _, y = np.unique(_labels(labels), return_inverse=True)
    c = int(y.max()) + 1 if y.size else 0
    if c < 2:
        raise ValueError("a Fisher-space score needs at least two classes among the labels")
    return y.reshape(-1), c


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _class_stats(f: np.ndarray, y: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class means [C, D], priors n_c / N, and the prior-weighted within-class covariance
    Σ_c p_c cov(X_c) with the 1/n_c (``bias=1``) covariance of both references, i.e. XcᵀXc / N."""
    counts = np.bincount(y, minlength=c).astype(np.float64)
    means = np.zeros((c, f.shape[1]))
    np.add.at(means, y, f)
    means /= counts[:, None]
    xc = f - means[y]
    return means, counts / len(y), xc.T @ xc / len(y)


def _shrunk(s: np.ndarray, shrinkage: float) -> np.ndarray:
    """(1 - λ) S + λ tr(S)/D I: both references' (and scikit-learn's ``shrunk_covariance``) target."""
    d = s.shape[0]
    out = (1.0 - shrinkage) * s
    out.flat[:: d + 1] += shrinkage * np.trace(s) / d
    return out


# ------------------------------------------------------------------------------------ SFDA

def dominant_eigenvalue(a: np.ndarray, iters: int = 3) -> float:
    """The SFDA reference's ``iterative_A``: three power-iteration rounds from the row sums, each two
    normalised products; returns xᵀ A y of the last pair (an estimate of λ_max, exact for D = 1)."""
    x = a.sum(1)
    for _ in range(iters):
        t = a @ x
        y = t / np.linalg.norm(t)
        t = a @ y
        x = t / np.linalg.norm(t)
    return float(x @ a @ y)


def sfda_shrinkage(sw: np.ndarray) -> float:
    """λ = max(exp(-5 λ_max(Sw)), 1e-10), λ_max from ``dominant_eigenvalue`` (the reference's constants)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        top = dominant_eigenvalue(sw)
    if not math.isfinite(top):
        raise FloatingPointError("SFDA: the power iteration on the within-class covariance found no direction "
                                 "(all classes collapsed to their means, or row sums of zero)")
    return max(math.exp(-5.0 * top), 1e-10)


def _fisher_proba(f: np.ndarray, y: np.ndarray, c: int, shrinkage: float) -> np.ndarray:
    """p(class | x) of the reference's SFDA classifier: coef = M V Vᵀ with V all D generalized eigenvectors of
    (Sb, S̃w), S̃w the shrunk within-class covariance; Vᵀ S̃w V = I makes V Vᵀ = S̃w⁻¹, so we solve with a
    Cholesky factor of S̃w instead (Sb drops out: the reference keeps every eigenvector)."""
    means, priors, sw = _class_stats(f, y, c)
    coef = linalg.cho_solve(linalg.cho_factor(_shrunk(sw, shrinkage)), means.T).T
    intercept = -0.5 * np.sum(means * coef, 1) + np.log(priors)
    return _softmax(f @ coef.T + intercept)


def sfda_score(features: np.ndarray, labels) -> float:
    """SFDA (Shao et al., ECCV 2022), as the reference ``TencentARC/SFDA`` ``metrics.SFDA_Score``:

    1. Regularised Fisher space: within-class covariance Sw (prior-weighted, 1/n_c), shrinkage
       λ = max(exp(-5 λ_max(Sw)), 1e-10) with λ_max from 3 rounds of the reference's power iteration,
       S̃w = (1 - λ) Sw + λ tr(Sw)/D I; the classifier in the space of all D discriminant directions,
       softmax(x S̃w⁻¹ μ_kᵀ - μ_k S̃w⁻¹ μ_kᵀ / 2 + log p_k).
    2. Self-challenge (ConfMix): the probabilities are softened by a second softmax (of the
       probabilities themselves), q = that of the true class; each feature moves to
       q x + (1 - q) μ̄_y, μ̄_y the mean of the OTHER classes' means (computed before mixing: the
       reference mixes toward all confusers at once, not toward one predicted class).
    3. The same classifier refitted on the mixed features with the same λ; the score is the mean
       probability of the true class (no log, as the reference).
    No PCA or feature normalisation (the reference scores raw features). Labels need not be 0..C-1.
    """
    y, c = _class_index(labels)
    f = np.array(features, dtype=np.float64)  # a copy: ConfMix rewrites it (the reference mixes in place)
    n = len(f)
    means, _, sw = _class_stats(f, y, c)
    lam = sfda_shrinkage(sw)
    prob = _softmax(_fisher_proba(f, y, c, lam))
    q = prob[np.arange(n), y][:, None]
    others = (means.sum(0) - means) / (c - 1)
    f = q * f + (1.0 - q) * others[y]
    prob = _fisher_proba(f, y, c, lam)
    return float(prob[np.arange(n), y].mean())


# ------------------------------------------------------------------------------------ NCTI

NCTI_PCA = 64      # the reference's PCA(n_components=64)
NCTI_TOP = 32      # shrinkage from the variance of the first 32 components
LDA_TOL = 1e-4     # scikit-learn LinearDiscriminantAnalysis' default rank tolerance (svd solver)


def _pca(f: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn PCA(k).fit_transform by an exact SVD: scores and explained variances (ddof 1)."""
    fc = f - f.mean(0)
    _, s, vt = np.linalg.svd(fc, full_matrices=False)
    return fc @ vt[:k].T, s[:k] ** 2 / (len(f) - 1)


def _lda_eigen(f: np.ndarray, y: np.ndarray, c: int, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn LDA(solver='eigen', shrinkage): transform (x V, the top C-1 directions) and predict_proba."""
    means, priors, sw = _class_stats(f, y, c)
    fc = f - f.mean(0)
    sws = _shrunk(sw, shrinkage)
    sb = _shrunk(fc.T @ fc / len(f), shrinkage) - sws
    evals, evecs = linalg.eigh(sb, sws)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    coef = means @ evecs @ evecs.T
    intercept = -0.5 * np.sum(means * coef, 1) + np.log(priors)
    return f @ evecs[:, : min(c - 1, f.shape[1])], _softmax(f @ coef.T + intercept)


def _lda_svd(f: np.ndarray, y: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn LDA(solver='svd') as in the NCTI reference's era: within-class scaling 1/(N - C) (scikit-learn
    from 1.9 on uses 1/N, which rescales the projection and sharpens the posteriors by N/(N - C))."""
    n = len(f)
    means, priors, _ = _class_stats(f, y, c)
    xbar = priors @ means
    xc = f - means[y]
    std = xc.std(0)
    std[std == 0] = 1.0
    _, s, vt = np.linalg.svd(np.sqrt(1.0 / (n - c)) * (xc / std), full_matrices=False)
    rank = int(np.sum(s > LDA_TOL))
    scalings = (vt[:rank] / std).T / s[:rank]
    centres = (np.sqrt(n * priors / (c - 1)) * (means - xbar).T).T @ scalings
    _, s, vt = np.linalg.svd(centres, full_matrices=False)
    scalings = scalings @ vt.T[:, : int(np.sum(s > LDA_TOL * s[0]))]
    coef = (means - xbar) @ scalings
    intercept = -0.5 * np.sum(coef**2, 1) + np.log(priors)
    coef = coef @ scalings.T
    intercept -= xbar @ coef.T
    return (f - xbar) @ scalings[:, : min(c - 1, f.shape[1])], _softmax(f @ coef.T + intercept)


def ncti_terms(features: np.ndarray, labels) -> tuple[float, float, float]:
    """NCTI's three terms (Wang et al., "How Far Pre-trained Models Are from Neural Collapse on the Target Dataset
    Informs their Transferability", ICCV 2023), as the reference ``BUserName/NCTI`` ``metrics.NCTI_Score``:

    PCA to min(64, N, D) components (the reference: 64, which scikit-learn refuses above min(N, D); an exact SVD
    where its 'auto' solver may pick a randomized one), then LDA on them: shrinkage
    t = max(exp(-Σ first 32 explained variances), 1e-10); t = 1e-10 exactly takes the unshrunk 'svd' solver (as
    scikit-learn before 1.9: within scaling 1/(N - C), rank tolerance 1e-4), any larger t the 'eigen' solver with
    shrinkage t (target tr/D·I, 1/n covariances). Returns, in the reference's order,

    - ``etf`` (simplex-ETF term): nuclear norm of the centred LDA projection [N, min(C-1, k)];
    - ``ncc`` (nearest-centre classifier term): mean LDA posterior of the true class;
    - ``vc`` (within-class variability collapse): log Σ_c ‖P_c‖_* with P_c the posteriors [n_c, C] of class c
      (lower = each class's predictions closer to rank one, i.e. collapsed).
    """
    y, c = _class_index(labels)
    f = np.asarray(features, dtype=np.float64)
    z, var = _pca(f, min(NCTI_PCA, *f.shape))
    t = max(math.exp(-float(var[:NCTI_TOP].sum())), 1e-10)
    low, prob = _lda_svd(z, y, c) if t == 1e-10 else _lda_eigen(z, y, c, t)
    etf = float(np.linalg.norm(low - low.mean(0, keepdims=True), ord="nuc"))
    ncc = float(prob[np.arange(len(y)), y].mean())
    vc = math.log(sum(float(np.linalg.norm(prob[y == k], ord="nuc")) for k in range(c)))
    return etf, ncc, vc


def ncti_combine(terms: list[tuple[float, float, float]] | np.ndarray) -> np.ndarray:
    """The reference's ranking score over a SET of candidates: each term min-max scaled over the set,
    score = ncc' + etf' - vc'. A term equal for every candidate scales to 0 (the reference divides by zero)."""
    t = np.asarray(terms, dtype=np.float64).reshape(-1, 3)
    span = t.max(0) - t.min(0)
    scaled = np.divide(t - t.min(0), span, out=np.zeros_like(t), where=span > 0)
    return scaled[:, 1] + scaled[:, 0] - scaled[:, 2]


def ncti_score(features: np.ndarray, labels) -> float:
    """NCTI of ONE candidate: etf + ncc - vc, the reference's combination without its min-max scaling over the
    compared models (which no single score can know). The nuclear norm grows like √N·√(between/within) and so
    dominates; to rank a set as the paper does, pass the candidates' ``ncti_terms`` to ``ncti_combine``."""
    etf, ncc, vc = ncti_terms(features, labels)
    return etf + ncc - vc
