"""Training-free proxy: NASWOT (Mellor et al., ICML 2021), the paper's choice.

For a batch of B images, every activation module's *input* is binarised (x > 0 is the
code of the unit); K = sum over modules of  C Cᵀ + (1 - C)(1 - C)ᵀ,  i.e. per pair of images
the number of units on which their codes agree (N_A minus the Hamming distance). The score
is log|det K| (``slogdet`` in float64), averaged over batches. As the NASWOT reference we
hook activation layers only (DeRy's code also hooked Linear/attention/dropout outputs) and
do not normalise by the number of units (their issue #20: deeper nets score higher).
The network runs in train mode (batch statistics), as both reference codes do.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

ACTIVATIONS = ("ReLU", "ReLU6", "LeakyReLU", "GELU", "GELUTanh", "QuickGELU", "SiLU", "Swish", "Hardswish",
               "HardSwish", "HardSwishMe", "Mish", "ELU", "SELU", "PReLU", "CELU")


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


def naswot(model: nn.Module, batches: list[torch.Tensor]) -> float:
    was_training = model.training
    model.train()
    try:
        scores = [float(torch.linalg.slogdet(naswot_kernel(model, x))[1]) for x in batches]
    finally:
        model.train(was_training)
    score = float(np.mean(scores))
    if not np.isfinite(score):
        raise FloatingPointError("NASWOT score is not finite (a singular kernel: identical codes for two images)")
    return score


PROXIES = {"naswot": naswot}
