"""NASWOT against a direct computation from its definition."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from dery.proxy import naswot, naswot_kernel


def test_kernel_counts_agreeing_activation_codes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4), nn.ReLU())
    x = torch.randn(6, 5)
    with torch.no_grad():
        h1 = net[0](x)
        h2 = net[2](net[1](h1))
    codes = torch.cat([h1 > 0, h2 > 0], 1).numpy()
    n_units = codes.shape[1]
    hamming = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    want = n_units - hamming  # K_ij = N_A - d_H(c_i, c_j)
    np.testing.assert_array_equal(naswot_kernel(net, x).numpy(), want)


def test_score_is_mean_log_determinant_over_batches():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU())
    batches = [torch.randn(5, 8) for _ in range(3)]
    want = np.mean([np.linalg.slogdet(naswot_kernel(net, b).numpy())[1] for b in batches])
    assert naswot(net, batches) == pytest.approx(want, rel=1e-12)


def test_a_network_without_activations_is_refused():

    with pytest.raises(ValueError, match="activation"):
        naswot(nn.Linear(3, 3), [torch.randn(4, 3)])


# ---------------------------------------------------------------- the other registered proxies

from scipy import stats  # noqa: E402

from dery import proxy as PX  # noqa: E402


def _blobs(n_per=20, classes=4, dim=6, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    y = np.repeat(np.arange(classes), n_per)
    return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def test_registry_holds_naswot_and_at_least_three_literature_scores():
    assert {"naswot", "kta", "logme", "linear_probe", "jacov", "synflow"} <= set(PX.PROXIES)
    assert PX.LABEL_AWARE <= set(PX.PROXIES) and PX.FEATURE_PROXIES <= set(PX.PROXIES)


def test_kta_is_one_for_one_hot_features_and_invariant_to_scale_rotation_shift():
    y = np.repeat(np.arange(5), 7)
    one_hot = np.eye(5)[y]
    assert PX.kta_score(one_hot, y) == pytest.approx(1.0, abs=1e-12)
    f, y = _blobs()
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))
    base = PX.kta_score(f, y)
    assert 0 < base < 1
    assert PX.kta_score(3.7 * f @ q + 11.0, y) == pytest.approx(base, rel=1e-10)
    # label permutation (renaming classes) changes nothing
    assert PX.kta_score(f, (y + 1) % 4) == pytest.approx(base, rel=1e-12)


def test_kta_equals_the_gram_matrix_definition():
    f, y = _blobs(n_per=6, classes=3, dim=4, spread=1.0)
    n = len(y)
    h = np.eye(n) - 1.0 / n
    k, l_ = h @ f @ f.T @ h, h @ np.eye(3)[y] @ np.eye(3)[y].T @ h
    want = np.sum(k * l_) / (np.linalg.norm(k) * np.linalg.norm(l_))
    assert PX.kta_score(f, y) == pytest.approx(want, rel=1e-10)


def test_kta_prefers_separable_features():
    sep, y = _blobs(spread=0.1)
    noisy = np.random.default_rng(3).normal(size=sep.shape)
    assert PX.kta_score(sep, y) > 0.5 > PX.kta_score(noisy, y)


def _brute_log_evidence(f, y, alpha, beta):
    cov = f @ f.T / alpha + np.eye(len(y)) / beta
    return stats.multivariate_normal(mean=np.zeros(len(y)), cov=cov).logpdf(y)


@pytest.mark.parametrize("n,d", [(30, 5), (12, 20)])  # full rank, and more features than samples
def test_logme_evidence_matches_the_gaussian_marginal_and_is_its_maximum(n, d):
    from scipy.optimize import minimize

    rng = np.random.default_rng(n + d)
    f = rng.normal(size=(n, d))
    y = (f @ rng.normal(size=d) + 0.5 * rng.normal(size=n) > 0).astype(float)
    ev, alpha, beta = PX.logme_fit(f, y)
    assert ev == pytest.approx(_brute_log_evidence(f, y, alpha, beta), rel=1e-8)
    best = minimize(lambda p: -_brute_log_evidence(f, y, np.exp(p[0]), np.exp(p[1])), x0=[0.0, 0.0],
                    method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
    assert ev == pytest.approx(-best.fun, abs=1e-4)


def test_logme_is_higher_for_separable_features():
    sep, y = _blobs(spread=0.1)
    noisy = np.random.default_rng(4).normal(size=sep.shape)
    assert PX.logme_score(sep, y) > PX.logme_score(noisy, y)


def test_linear_probe_is_held_out_accuracy():
    sep, y = _blobs(n_per=30, spread=0.1)
    assert PX.linear_probe_score(sep, y) == 1.0
    noisy = np.random.default_rng(5).normal(size=(120, 6))
    assert PX.linear_probe_score(noisy, y) < 0.5  # chance is 0.25: no leak from train to test folds
    assert PX.linear_probe_score(sep, y, seed=3) == PX.linear_probe_score(sep, y, seed=3)


def test_jacov_of_identical_jacobians_is_penalised_and_of_orthogonal_ones_is_not():
    k = 1e-5
    ortho = np.eye(4, 16) * 3.0 - 0.75 * np.eye(4, 16).mean(1, keepdims=True)
    v = np.linalg.eigvalsh(np.corrcoef(ortho))
    assert PX.jacov_from_jacobians(ortho) == pytest.approx(-np.sum(np.log(v + k) + 1 / (v + k)))
    same = np.tile(np.arange(16.0), (4, 1)) + 1e-9 * np.random.default_rng(0).normal(size=(4, 16))
    assert PX.jacov_from_jacobians(same) < PX.jacov_from_jacobians(ortho)


def test_jacov_matches_a_direct_jacobian():
    """The batched backward against one Jacobian per image, in float64, where the tolerance can be derived: the
    score (-2e5) is steepest at the two eigenvalues that are exactly 0 (6 Jacobians of 5 inputs: rank 4), slope
    1/k² = 1e10, and eigvalsh finds them within ~n·u·‖C‖ ≤ 6·2⁻⁵³·6 = 4e-15, so even exact Jacobians leave 8e-5 of
    play, 4e-10 of the score. 1e-9 holds on any instruction set (measured 1e-12 to 9e-12). In float32 the
    Jacobians' own round-off moves the small nonzero eigenvalues enough for 7.7e-8 to 1.0e-7."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: net(v[None]).sum(), xi) for xi in x])
    assert PX.jacov(net, [x]) == pytest.approx(PX.jacov_from_jacobians(jac.numpy()), rel=1e-9)


def test_synflow_of_a_linear_chain_is_the_log_of_its_path_sum():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    w1, w2 = net[0].weight.detach().abs().double(), net[2].weight.detach().abs().double()
    r = (w2 @ w1 @ torch.ones(3, dtype=torch.float64)).sum()  # R = 1ᵀ|W2||W1|1; each layer's θ·∂R/∂θ sums to R
    assert PX.synflow(net, [torch.randn(2, 3)]) == pytest.approx(np.log(2 * float(r)), rel=1e-12)
    assert net[0].weight.min() < 0, "the model itself is left untouched"


def _perturbed(norm: nn.Module) -> nn.Module:
    """A norm layer whose statistics and affine parameters would change any score that kept them."""
    with torch.no_grad():
        for name, t in [*norm.named_parameters(), *norm.named_buffers()]:
            if t.is_floating_point():
                t.copy_(torch.full_like(t, 0.01) if "var" in name else torch.linspace(-3.0, 5.0, t.numel()).view_as(t))
    return norm.train(False)


@pytest.mark.parametrize("norm", [lambda: nn.BatchNorm1d(4), lambda: nn.LayerNorm(4),
                                  lambda: nn.GroupNorm(2, 4)], ids=["batchnorm", "layernorm", "groupnorm"])
def test_synflow_removes_normalisation_as_the_bn_free_reference(norm):
    """Linear(3, 4) -> norm -> ReLU -> Dropout -> Linear(4, 2) scored by hand: with θ = |θ|, no normalisation and
    a ones input, h = |W1|1 + |b1| ≥ 0 passes the ReLU, R = 1ᵀ|W2|h, and Σ|θ ⊙ ∂R/∂θ| over the two weights is
    1ᵀ|W2|h (W2) + 1ᵀ|W2||W1|1 (W1); the bias is in the network but not scored, dropout is off."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), _perturbed(norm()), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(4, 2, bias=False))
    w1, b1, w2 = (t.detach().abs().double() for t in (net[0].weight, net[0].bias, net[4].weight))
    one, c = torch.ones(3, dtype=torch.float64), w2.sum(0)  # c = 1ᵀ|W2|
    want = float(c @ (w1 @ one + b1) + c @ w1 @ one)
    assert PX.synflow(net, [torch.randn(2, 3)]) == pytest.approx(math.log(want), rel=1e-12)


def test_synflow_scores_the_absolute_products_and_keeps_the_activation_of_timm_norm_act_layers():
    """|θ ⊙ ∂R/∂θ|: a sign flip after the last layer makes every product negative, the score does not change.
    timm's BatchNormAct2d loses its normalisation, not its activation: conv 1x1 (1 -> 2, a = |w|), tanh, linear
    (v = |v|) gives R = Σ v tanh(a) and products v tanh(a) (v), a v (1 - tanh² a) (w)."""
    from timm.layers import BatchNormAct2d

    class Negate(nn.Module):
        def forward(self, x):
            return -x

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), _perturbed(BatchNormAct2d(2, act_layer=nn.Tanh)),
                        nn.Flatten(), nn.Linear(2, 1, bias=False))
    a, v = net[0].weight.detach().abs().double().flatten(), net[3].weight.detach().abs().double().flatten()
    want = float((v * torch.tanh(a) + a * v * (1 - torch.tanh(a) ** 2)).sum())
    x = [torch.randn(2, 1, 1, 1)]
    assert PX.synflow(net, x) == pytest.approx(math.log(want), rel=1e-12)
    assert PX.synflow(nn.Sequential(*net, Negate()), x) == PX.synflow(net, x)


def test_model_level_label_aware_proxies_need_labels_and_agree_with_feature_scores():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    feats = PX.final_features(net, [x[:20], x[20:]])
    assert feats.shape == (40, 8)
    assert PX.kta(net, [x[:20], x[20:]], [y[:20], y[20:]]) == pytest.approx(PX.kta_score(feats, y.numpy()))
    with pytest.raises(ValueError, match="label-aware"):
        PX.logme(net, [x], None)


def test_every_proxy_scores_a_real_assembly_deterministically():
    """A stitched two-family network (ResNet block -> ViT-ish MLP head) through the stage's scorer."""
    from dery.stages.proxy import score_candidate

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                        nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    probe = ([x[:16], x[16:]], [y[:16], y[16:]])
    a = score_candidate(net, list(PX.PROXIES), probe, probe, seed=7)
    b = score_candidate(net, list(reversed(PX.PROXIES)), probe, probe, seed=7)
    assert set(a) == set(PX.PROXIES) and all(v is not None for v in a.values())
    assert a == b
