"""The benchmark's extra proxies (SFDA, NCTI, MeCo, ZiCo, params, MACs, low fidelity), each against an answer
derived here by hand or step by step from its reference, plus the registries that keep them apart from the
pipeline's hashed PROXIES."""
import copy
import math

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from dery import proxy as PX
from dery import transferability as T


def _blobs(n_per=20, classes=4, dim=6, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    y = np.repeat(np.arange(classes), n_per)
    return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


# ------------------------------------------------------------------------------------ SFDA

def _two_class_1d_posteriors(x, y):
    """Fisher classifier of 1-D, two classes: within variance a (1/N), means m_k, priors n_k / N;
    logit_k = x m_k / a - m_k² / (2a) + log n_k/N, so p(1 | x) = σ(x (m1 - m0)/a - (m1² - m0²)/(2a) + log n1/n0).
    Returns the posterior of each point's own class."""
    m = [float(np.mean([v for v, c in zip(x, y, strict=True) if c == k])) for k in (0, 1)]
    a = sum((v - m[c]) ** 2 for v, c in zip(x, y, strict=True)) / len(x)
    prior = math.log(list(y).count(1) / list(y).count(0))
    p1 = [_sigmoid(v * (m[1] - m[0]) / a - (m[1] ** 2 - m[0] ** 2) / (2 * a) + prior) for v in x]
    return [p if c == 1 else 1 - p for p, c in zip(p1, y, strict=True)], m, a


def test_sfda_of_a_one_dimensional_two_class_toy_by_hand():
    """In 1-D the shrinkage cannot matter ((1-λ)a + λ·tr(a)/1 = a), so the score is a chain of scalars: the true
    class's posterior p, softened q = e^p / (e^p + e^(1-p)) = σ(2p - 1), each x moved to q x + (1-q) m_other (the
    mean of the other class), the Fisher classifier refitted, the mean true-class posterior."""
    x = [-1.3, -0.9, -0.7, 0.4, 1.1, 1.6]
    y = [0, 0, 0, 1, 1, 1]
    p, m, _ = _two_class_1d_posteriors(x, y)
    q = [_sigmoid(2 * v - 1) for v in p]
    mixed = [qi * v + (1 - qi) * m[1 - c] for qi, v, c in zip(q, x, y, strict=True)]
    p2, _, _ = _two_class_1d_posteriors(mixed, y)
    want = sum(p2) / len(p2)
    assert PX.sfda_score(np.array(x)[:, None], np.array(y)) == pytest.approx(want, rel=1e-12)
    # labels are names: any two distinct values score the same
    assert PX.sfda_score(np.array(x)[:, None], np.array(y) * 5 + 3) == pytest.approx(want, rel=1e-12)


def _reference_sfda(x, y):
    """SFDA_Score of the reference, step by step: power iteration for λ_max(Sw), λ, shrunk St and Sw,
    the generalized eigenproblem (Sb, S̃w), coef = M V Vᵀ, intercept, softmax; softmax again, ConfMix, refit."""
    c = int(y.max()) + 1
    n, d = x.shape

    def cov(a):  # numpy's bias=1 covariance
        a = a - a.mean(0)
        return a.T @ a / len(a)

    def shrink(s, lam):
        return (1 - lam) * s + lam * np.trace(s) / d * np.eye(d)

    def fit_proba(x, lam=None):
        priors = np.bincount(y) / n
        means = np.stack([x[y == k].mean(0) for k in range(c)])
        sw = sum(priors[k] * cov(x[y == k]) for k in range(c))
        if lam is None:
            v = sw.sum(1)
            for _ in range(3):
                t = sw @ v
                u = t / np.linalg.norm(t)
                t = sw @ u
                v = t / np.linalg.norm(t)
            lam = max(np.exp(-5 * (v @ sw @ u)), 1e-10)
        sws = shrink(sw, lam)
        evals, evecs = linalg.eigh(shrink(cov(x), lam) - sws, sws)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        coef = means @ evecs @ evecs.T
        z = x @ coef.T - 0.5 * np.diag(means @ coef.T) + np.log(priors)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True), means, lam

    prob, means, lam = fit_proba(x)
    prob = np.exp(prob) / np.exp(prob).sum(1, keepdims=True)
    others = np.stack([(means.sum(0) - means[k]) / (c - 1) for k in range(c)])
    q = prob[np.arange(n), y][:, None]
    prob, _, _ = fit_proba(q * x + (1 - q) * others[y], lam)
    return prob[np.arange(n), y].mean(), lam


def test_sfda_follows_the_reference_steps_with_its_shrinkage():
    """Small within-class spread, so λ = exp(-5 λ_max) is far above its 1e-10 floor and the shrinkage counts;
    the implementation's Cholesky solve stands for the reference's V Vᵀ = S̃w⁻¹."""
    x, y = _blobs(n_per=8, classes=3, dim=4, spread=0.15, seed=2)
    want, lam = _reference_sfda(x, y)
    assert 1e-3 < lam < 1
    means = np.stack([x[y == k].mean(0) for k in range(3)])
    assert PX.sfda_shrinkage((x - means[y]).T @ (x - means[y]) / len(x)) == pytest.approx(lam, rel=1e-12)
    assert PX.sfda_score(x, y) == pytest.approx(want, rel=1e-10)
    xs = x.copy()
    PX.sfda_score(xs, y)
    assert (xs == x).all(), "ConfMix works on a copy (the reference mixes the caller's array in place)"


def test_sfda_prefers_separated_features_to_shuffled_labels():
    sep, y = _blobs(spread=0.5)
    shuffled = np.random.default_rng(0).permutation(y)
    assert PX.sfda_score(sep, y) > 0.9 > 0.5 > PX.sfda_score(sep, shuffled)
    with pytest.raises(ValueError, match="two classes"):
        PX.sfda_score(sep, np.zeros_like(y))


# ------------------------------------------------------------------------------------ NCTI

def test_ncti_terms_of_a_one_dimensional_two_class_toy_by_hand():
    """1-D, small variance: PCA keeps the centred feature, t = exp(-var) > 1e-10 takes the shrunk 'eigen' LDA,
    and in 1-D shrinkage is void. The direction w has w²·a = 1 (a the within variance), so the centred projection
    is (x - x̄)/√a, a column whose nuclear norm is its length; the posteriors are the Fisher classifier's."""
    x = np.array([-0.31, -0.22, -0.18, 0.05, 0.12, 0.27, 0.30])
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    var = x.var(ddof=1)
    assert math.exp(-var) > 1e-10
    p, _, a = _two_class_1d_posteriors(list(x - x.mean()), list(y))
    etf = math.sqrt(np.sum((x - x.mean()) ** 2) / a)
    ncc = float(np.mean(p))
    p_true = np.array(p)
    p1 = np.where(y == 1, p_true, 1 - p_true)
    probs = np.stack([1 - p1, p1], 1)
    vc = math.log(sum(np.linalg.svd(probs[y == k], compute_uv=False).sum() for k in (0, 1)))
    got = PX.ncti_terms(x[:, None], y)
    assert got == pytest.approx((etf, ncc, vc), rel=1e-10)
    assert PX.ncti_score(x[:, None], y) == pytest.approx(etf + ncc - vc, rel=1e-10)


def test_ncti_svd_path_is_lda_with_the_unbiased_within_class_covariance():
    """Large variance (Σ of the top variances > 23) takes the unshrunk 'svd' LDA: the reference's scikit-learn
    whitened the within-class scatter with 1/(N - C). With a full-rank within scatter that is the textbook LDA:
    posteriors softmax(x S⁻¹ m_k - m_k S⁻¹ m_k / 2 + log p_k), S = Σ (x - m_y)(x - m_y)ᵀ / (N - C), and the
    projection onto the C-1 leading generalized eigenvectors of (Sb, S) normalised to wᵀ S w = 1 (PCA keeps
    all 6 components here, a rotation that changes none of it)."""
    x, y = _blobs(n_per=12, classes=3, dim=6, spread=3.0, seed=4)
    n, c = len(y), 3
    assert np.sort(np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2 / (n - 1))[::-1][:32].sum() > 23.1
    priors = np.bincount(y) / n
    means = np.stack([x[y == k].mean(0) for k in range(c)])
    s = (x - means[y]).T @ (x - means[y]) / (n - c)
    coef = np.linalg.solve(s, means.T).T
    z = x @ coef.T - 0.5 * np.sum(means * coef, 1) + np.log(priors)
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    xbar = priors @ means
    evals, w = linalg.eigh((means - xbar).T @ np.diag(priors) @ (means - xbar), s)
    low = (x - x.mean(0)) @ w[:, np.argsort(evals)[::-1][: c - 1]]
    etf = np.linalg.svd(low, compute_uv=False).sum()
    vc = math.log(sum(np.linalg.svd(prob[y == k], compute_uv=False).sum() for k in range(c)))
    assert PX.ncti_terms(x, y) == pytest.approx((etf, prob[np.arange(n), y].mean(), vc), rel=1e-9)


def test_ncti_matches_the_scikit_learn_reference():
    """The reference's NCTI_Score (PCA(64) then LDA) with scikit-learn, where it has the 64 components: the shrunk
    'eigen' path exactly; the 'svd' path up to scikit-learn 1.9's change of the within scaling 1/(N - C) -> 1/N,
    which multiplies its projection by √(N/(N-C)) and its logits (less the log priors) by N/(N-C)."""
    sk = pytest.importorskip("sklearn")
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis as LDA

    new_svd = tuple(int(v) for v in sk.__version__.split(".")[:2]) >= (1, 9)
    for scale in (0.02, 1.0):  # t ≈ 0.9 ('eigen', shrunk) and t = 1e-10 ('svd')
        x, y = _blobs(n_per=40, classes=4, dim=70, spread=1.0, seed=5)
        x = x * scale
        n, c = len(y), 4
        pca = PCA(n_components=64)
        z = pca.fit_transform(x)
        t = max(np.exp(-pca.explained_variance_[:32].sum()), 1e-10)
        assert (t == 1e-10) == (scale == 1.0)
        clf = LDA(solver="svd") if t == 1e-10 else LDA(solver="eigen", shrinkage=float(t))
        low = clf.fit_transform(z, y)
        r = (n - c) / n if (t == 1e-10 and new_svd) else 1.0  # ours / scikit-learn's within scaling
        logp = np.log(np.bincount(y) / n)
        dec = r * (clf.decision_function(z) - logp) + logp
        prob = np.exp(dec - dec.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        etf = math.sqrt(r) * np.linalg.norm(low - low.mean(0), ord="nuc")
        vc = math.log(sum(np.linalg.norm(prob[y == k], ord="nuc") for k in range(c)))
        assert PX.ncti_terms(x, y) == pytest.approx((etf, prob[np.arange(n), y].mean(), vc), rel=1e-8)


def test_ncti_combine_is_the_reference_min_max_over_a_set():
    terms = [(1.0, 0.5, 2.0), (3.0, 0.7, 1.0), (2.0, 0.9, 4.0)]
    # etf' = (0, 1, ½), ncc' = (0, ½, 1), vc' = (⅓, 0, 1); score = ncc' + etf' - vc'
    np.testing.assert_allclose(PX.ncti_combine(terms), [-1 / 3, 1.5, 0.5], rtol=1e-12)
    # a term equal for every candidate carries no ranking information: it scales to 0, not to 0/0
    np.testing.assert_allclose(PX.ncti_combine([(1.0, 0.5, 2.0), (1.0, 0.7, 2.0)]), [0.0, 1.0], rtol=1e-12)


def test_ncti_prefers_separated_features_to_shuffled_labels():
    sep, y = _blobs(n_per=30, spread=0.5, seed=6)
    shuffled = np.random.default_rng(1).permutation(y)
    good, bad = PX.ncti_terms(sep, y), PX.ncti_terms(sep, shuffled)
    assert good[0] > bad[0] and good[1] > bad[1]  # more spread between classes, better nearest-centre fit
    assert PX.ncti_score(sep, y) > PX.ncti_score(sep, shuffled)
    assert np.argmax(PX.ncti_combine([bad, good])) == 1


# ------------------------------------------------------------------------------------ MeCo

# two 2x2 maps, centred and orthonormal as vectors over the 4 positions
A = np.array([1.0, -1.0, 1.0, -1.0]) / 2
B = np.array([1.0, 1.0, -1.0, -1.0]) / 2


def _conv1x1(weight):
    conv = nn.Conv2d(2, 2, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(weight, dtype=torch.float64).view(2, 2, 1, 1))
    return conv


def _image_then_noise():
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[0] = torch.as_tensor(np.stack([A, B]).reshape(2, 2, 2))
    return x


def test_meco_of_orthogonal_channel_maps_is_one_per_hooked_module():
    """A rotation keeps the channel maps centred and orthonormal: correlation I, λ_min = 1. Only the first image
    counts (the others are noise), and every module is hooked, the container too."""
    th = 0.3
    conv = _conv1x1([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    x = _image_then_noise()
    assert PX.meco(conv, [x]) == pytest.approx(1.0, abs=1e-12) == PX.meco(conv, [x[:1]])
    assert PX.meco(nn.Sequential(conv), [x]) == pytest.approx(2.0, abs=1e-12)


def test_meco_passes_train_mode_batchnorm_on_1x1_maps_with_the_batchs_statistics():
    """The reference's lone image cannot pass a train-mode BatchNorm on a 1x1 map (one value per channel); the
    batch can, and 1x1 maps (R rows of one position) are singular: every module adds 0."""
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        net.train()(torch.randn(1, 2, 1, 1))
    assert PX.meco(net.eval(), [torch.randn(4, 2, 1, 1)]) == 0.0


def test_meco_of_two_correlated_channels_is_one_minus_the_correlation():
    """Channels a and ρa + √(1-ρ²)b correlate ρ: eigenvalues 1 ± ρ. A train-mode BatchNorm rescales each channel
    (positively), which leaves the correlation alone, so conv, norm and container each add 1 - ρ; the norm's
    running statistics and the module's mode are restored."""
    rho = 0.6
    net = nn.Sequential(_conv1x1([[1.0, 0.0], [rho, math.sqrt(1 - rho**2)]]), nn.BatchNorm2d(2).double()).eval()
    before = copy.deepcopy(net.state_dict())
    assert PX.meco(net, [_image_then_noise()]) == pytest.approx(3 * (1 - rho), rel=1e-12)
    assert not net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_meco_rows_are_the_dimension_after_the_batch_as_the_reference():
    """A token sequence [1, L, C] gives L rows (tokens) over C, as the reference's ``data_output[0]``: two
    orthonormal tokens over 4 channels score 1 through an identity Linear (channels as rows: 4 rows over 2
    positions, a rank-1 matrix, would score 0). A Linear's [1, K] output is K one-entry rows: 0, as the
    reference's NaN -> 0; a constant channel makes the matrix singular: 0."""
    lin = nn.Linear(4, 4, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.eye(4))
    assert PX.meco(lin, [torch.as_tensor(np.stack([A, B]))[None]]) == pytest.approx(1.0, abs=1e-12)
    assert PX.meco(lin, [torch.randn(2, 4, dtype=torch.float64)]) == 0.0
    assert PX.min_correlation_eigenvalue(torch.as_tensor(np.stack([A, B, np.full(4, 3.0)]))) == 0.0
    assert PX.min_correlation_eigenvalue(torch.as_tensor(np.stack([A, B]))) == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------------ ZiCo

def _zico_by_hand(w, batches, labels):
    """Linear(D, K, bias=False) under mean cross-entropy: ∂L/∂W = (softmax(X Wᵀ) - Y)ᵀ X / B per batch; per entry
    mean_b|g| / std_b(g) (ddof 0) over the entries whose std is not 0; log of the sum."""
    grads = []
    for x, y in zip(batches, labels, strict=True):
        z = x @ w.T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grads.append(((p - np.eye(w.shape[0])[y]).T @ x / len(x)).ravel())
    g = np.stack(grads)
    std = g.std(0)
    keep = std != 0
    return math.log(np.sum(np.abs(g).mean(0)[keep] / std[keep]))


def test_zico_of_a_one_layer_linear_model_by_its_closed_form_gradients():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4))
    xs = [rng.normal(size=(5, 4)) for _ in range(3)]
    for x in xs:
        x[:, 2] = 0.0  # a dead input: its weights' gradients are 0 in every batch, std 0, left out (not 0/0)
    ys = [rng.integers(0, 3, 5) for _ in range(3)]
    net = nn.Linear(4, 3, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.as_tensor(w))
    want = _zico_by_hand(w, xs, ys)
    tx, ty = [torch.as_tensor(x) for x in xs], [torch.as_tensor(y) for y in ys]
    assert PX.zico(net, tx, ty) == pytest.approx(want, rel=1e-12)
    # one batch is split in two halves; the weights' .grad and requires_grad are left as they were
    sentinel = torch.full_like(net.weight, 7.0)
    net.weight.grad = sentinel.clone()
    net.weight.requires_grad_(False)
    assert PX.zico(net, [torch.cat(tx[:2])], [torch.cat(ty[:2])]) == pytest.approx(
        _zico_by_hand(w, [np.concatenate(xs[:2])[:5], np.concatenate(xs[:2])[5:]],
                      [np.concatenate(ys[:2])[:5], np.concatenate(ys[:2])[5:]]), rel=1e-12)
    assert torch.equal(net.weight.grad, sentinel) and not net.weight.requires_grad
    with pytest.raises(ValueError, match="label-aware"):
        PX.zico(net, tx, None)


def test_zico_sums_layers_and_skips_one_the_loss_does_not_reach():
    """Two layers add their logs; a Linear that is never called has no gradient and no term."""

    class WithSpare(nn.Module):
        def __init__(self, *mods):
            super().__init__()
            self.body = nn.Sequential(*mods)
            self.spare = nn.Linear(2, 2)

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    layers = [nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)]
    xs, ys = [torch.randn(8, 4) for _ in range(2)], [torch.randint(0, 3, (8,)) for _ in range(2)]
    plain = nn.Sequential(*layers)
    got = PX.zico(plain, xs, ys)
    grads = [[], []]
    for x, y in zip(xs, ys, strict=True):
        g = torch.autograd.grad(nn.functional.cross_entropy(plain(x), y), [layers[0].weight, layers[2].weight])
        for i in range(2):
            grads[i].append(g[i].reshape(-1))
    assert got == pytest.approx(sum(PX.zico_from_gradients(torch.stack(g)) for g in grads), rel=1e-12)
    assert PX.zico(WithSpare(*layers), xs, ys) == got


# ------------------------------------------------------------------------------ naive baselines

def _tiny_net():
    """The real tiny assembly of test_proxy.py: a ResNet-ish conv block into a ViT-ish MLP head."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def test_params_counts_the_trainable_parameters():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert PX.params(net, None, None) == 3 * 4 + 4 + 4 * 2 + 2
    net[0].requires_grad_(False)
    assert PX.params(net, None, None) == 4 * 2 + 2


def test_macs_are_the_multiply_accumulates_of_one_image():
    """Per output element a 3x3 conv does C_in·9 MACs: 64 positions x 4 channels x 3·9, then x 4·9; the head
    4·10. Biases, the norm and the activations are not multiply-accumulates; the batch size does not count."""
    net = _tiny_net().train()
    before = copy.deepcopy(net.state_dict())
    want = 64 * 4 * 3 * 9 + 64 * 4 * 4 * 9 + 4 * 10
    assert PX.macs(net, [torch.randn(16, 3, 8, 8)]) == want == PX.macs(net, [torch.randn(1, 3, 8, 8)])
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


# --------------------------------------------------------------------------------- low fidelity

def test_low_fidelity_after_one_adamw_step_by_hand():
    """W = 0, x = ±1 with labels 1 and 0. Untrained, both logits tie and argmax says class 0: half right. The
    mean cross-entropy gradient is -½ on W₁ and +½ on W₀; Adam's first step moves each by lr against the sign of its
    gradient (m̂/√v̂ = g/|g|) and weight decay scales 0: W = (-lr, +lr), every image right (and every image wrong
    under swapped labels). Three steps cycle the two batches."""
    net = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        net.weight.zero_()
    xs, ys = [torch.tensor([[1.0]]), torch.tensor([[-1.0]])], [torch.tensor([1]), torch.tensor([0])]
    both, both_y = [torch.tensor([[1.0], [-1.0]])], [torch.tensor([1, 0])]
    assert PX.low_fidelity(net, xs, ys, both, both_y, steps=0, lr=1e-3, seed=0) == 0.5
    assert PX.low_fidelity(net, both, both_y, both, both_y, steps=1, lr=1e-3, seed=0) == 1.0
    assert PX.low_fidelity(net, both, both_y, both, [torch.tensor([0, 1])], steps=1, lr=1e-3, seed=0) == 0.0
    assert PX.low_fidelity(net, xs, ys, both, both_y, steps=3, lr=1e-3, seed=0) == 1.0
    assert (net.weight == 0).all() and net.weight.grad is None


def test_low_fidelity_is_seeded_and_leaves_the_model_and_the_global_rng_untouched():
    net = nn.Sequential(*_tiny_net()[:-1], nn.Dropout(0.5), nn.Linear(4, 10)).eval()
    before = copy.deepcopy(net.state_dict())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(48, 3, 8, 8, generator=g), torch.randint(0, 10, (48,), generator=g)
    tr, tl, va, vl = [x[:16], x[16:32]], [y[:16], y[16:32]], [x[32:]], [y[32:]]
    rng = torch.get_rng_state()
    a = PX.low_fidelity(net, tr, tl, va, vl, steps=3, lr=1e-2, seed=5)
    assert a == PX.low_fidelity(net, tr, tl, va, vl, steps=3, lr=1e-2, seed=5) and 0.0 <= a <= 1.0
    assert torch.equal(torch.get_rng_state(), rng)
    assert not net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


# ----------------------------------------------------------------------------------- registries

def test_registries_add_the_new_proxies_beside_the_pipelines_hashed_ones():
    assert list(PX.PROXIES) == ["naswot", "kta", "logme", "linear_probe", "jacov", "synflow"]
    assert set(PX.FEATURE_SCORES) == set(PX.FEATURE_PROXIES) == set(PX.LABEL_AWARE) == {"kta", "logme",
                                                                                         "linear_probe"}
    assert set(PX.EXTRA_PROXIES) == {"meco", "zico", "params", "macs"}
    assert set(PX.EXTRA_FEATURE_SCORES) == {"sfda", "ncti"}
    assert set(PX.ALL_PROXIES) == set(PX.PROXIES) | set(PX.EXTRA_PROXIES) | set(PX.EXTRA_FEATURE_SCORES)
    assert PX.ALL_FEATURE_SCORES == {**PX.FEATURE_SCORES, **PX.EXTRA_FEATURE_SCORES}
    assert PX.ALL_FEATURE_PROXIES == set(PX.ALL_FEATURE_SCORES)
    assert PX.ALL_LABEL_AWARE == PX.LABEL_AWARE | {"sfda", "ncti", "zico"} and PX.ALL_LABEL_AWARE <= set(PX.ALL_PROXIES)
    # the feature code moved to dery.transferability; dery.proxy keeps serving the same objects
    for name in ("final_features", "kta_score", "logme_fit", "logme_score", "linear_probe_score", "_labels",
                 "_one_hot", "_need_labels", "sfda_score", "ncti_score"):
        assert getattr(PX, name) is getattr(T, name)


@pytest.mark.parametrize("name", list(PX.ALL_PROXIES))
def test_every_proxy_scores_the_tiny_assembly_deterministically_without_changing_it(name):
    net = _tiny_net()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    batches, labels = [x[:16], x[16:]], [y[:16], y[16:]]
    before = copy.deepcopy(net.state_dict())
    scores = []
    for _ in range(1 if name in PX.PROXIES else 2):  # test_proxy.py repeats the pipeline's own (linear_probe: ~1 s)
        with torch.random.fork_rng():
            torch.manual_seed(7)
            scores.append(PX.ALL_PROXIES[name](net, batches, labels))
    assert isinstance(scores[0], float) and math.isfinite(scores[0]) and scores[0] == scores[-1]
    assert net.training and all(p.grad is None and p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    if name in PX.ALL_FEATURE_SCORES and name != "linear_probe":  # the wrapper is the score of the final features
        assert scores[0] == PX.ALL_FEATURE_SCORES[name](PX.final_features(net, batches), y.numpy())
    if name in PX.ALL_LABEL_AWARE:
        with pytest.raises(ValueError, match="label-aware"):
            PX.ALL_PROXIES[name](net, batches, None)
