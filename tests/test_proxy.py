"""NASWOT against a direct computation from its definition."""
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
