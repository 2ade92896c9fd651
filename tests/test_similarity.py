"""Linear CKA: known answers, invariances, and agreement with a plain-numpy reference."""
import numpy as np
import pytest

from dery.similarity import (
    _centre,
    _feature_route,
    _gram_route,
    linear_cka,
    linear_cka_matrix,
)


def reference_cka(x, y):
    """Kornblith et al. (2019), Gram form with the explicit centring matrix H."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(kx * ky) / (np.linalg.norm(kx) * np.linalg.norm(ky)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_identical_representations_have_cka_one(rng):
    x = rng.normal(size=(64, 10))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_transform_and_isotropic_scaling(rng):
    x = rng.normal(size=(80, 12))
    y = rng.normal(size=(80, 7)) + x[:, :7]
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.2 * y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 5.0, y - 2.0) == pytest.approx(base, abs=1e-10)  # centring removes offsets


def test_not_invariant_to_anisotropic_scaling(rng):
    x = rng.normal(size=(80, 6))
    y = x @ np.diag([10, 1, 1, 1, 1, 0.1])
    assert linear_cka(x, y) < 0.99


def test_matches_numpy_reference_for_every_node_pair(rng):
    a = [rng.normal(size=(50, c)) for c in (3, 8, 5)]
    b = [rng.normal(size=(50, c)) + a[0][:, :1] for c in (4, 9)]
    got = linear_cka_matrix(a, b)
    want = np.array([[reference_cka(x, y) for y in b] for x in a])
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_gram_and_feature_routes_agree(rng):
    a = _centre([rng.normal(size=(40, c)) for c in (3, 30, 6)])
    b = _centre([rng.normal(size=(40, c)) for c in (50, 2)])
    np.testing.assert_allclose(_gram_route(a, b).numpy(), _feature_route(a, b).numpy(), atol=1e-10)


def test_large_probe_sets_take_the_feature_route_and_stay_exact(rng):
    # n*n > 4*width*width: the Gram matrices are never formed
    a = [rng.normal(size=(600, 4))]
    b = [rng.normal(size=(600, 3)) + a[0][:, :3]]
    assert linear_cka_matrix(a, b)[0, 0] == pytest.approx(reference_cka(a[0], b[0]), abs=1e-10)


def test_rejects_features_of_different_images(rng):
    with pytest.raises(ValueError, match="same probe images"):
        linear_cka_matrix([rng.normal(size=(10, 2))], [rng.normal(size=(11, 2))])


def test_the_cheaper_route_is_taken():
    from dery.similarity import route_costs

    gram, feature = route_costs([64, 128], [256], 100)
    assert gram < feature                      # few images: n x n Gram matrices are small
    gram, feature = route_costs([64, 128], [256], 5000)
    assert feature < gram                      # many images: the feature-space products are cheaper


@pytest.mark.parametrize("n", [20, 400])  # 20 images: one product of all Gram matrices; 400: per-pair feature route
def test_all_pairs_at_once_equals_pair_by_pair(rng, n):
    from dery.similarity import linear_cka_all, route_costs

    widths = {"a": (30, 80, 50), "b": (40, 90), "c": (60,)}
    assert (route_costs(widths["a"], widths["b"], n)[0] < route_costs(widths["a"], widths["b"], n)[1]) == (n == 20)
    feats = {m: [rng.normal(size=(n, c)) + (rng.normal(size=(n, 1)) if m != "a" else 0) for c in ws]
             for m, ws in widths.items()}
    got = linear_cka_all(feats)
    assert sorted(got) == [("a", "a"), ("a", "b"), ("a", "c"), ("b", "b"), ("b", "c"), ("c", "c")]
    for (x, y), m in got.items():
        np.testing.assert_allclose(m, linear_cka_matrix(feats[x], feats[y]), atol=1e-12)
