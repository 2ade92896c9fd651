"""Linear CKA: known answers, invariances, and agreement with a plain-numpy reference."""
import numpy as np
import pytest

from dery.similarity import _centre, _feature_route, _gram_route, linear_cka, linear_cka_matrix


def reference_cka(x, y):
    """Kornblith et al. (2019), Gram form with the explicit centring matrix H."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l) / (np.linalg.norm(k) * np.linalg.norm(l)))


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
