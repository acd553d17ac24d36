"""The regularisers of the F2PAD objective, each a differentiable torch function.

Images here are (3, H, W) tensors; pixel sets are (P, 3).
"""

from __future__ import annotations

import torch


def log_sparsity(anomaly: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. (8): sum over pixels of log(1 + ||A_ij||_2 / eps), grouped over the colour channels.

    A small floor inside the norm keeps the gradient finite at A_ij = 0.
    """
    norms = torch.sqrt((anomaly * anomaly).sum(-1) + 1e-12)
    return torch.log1p(norms / eps).sum()


def mog_energy(pixels: torch.Tensor, means: torch.Tensor, precisions: torch.Tensor) -> torch.Tensor:
    """Eq. (10): sum over pixels of the smallest Mahalanobis distance to a mixture component.

    pixels (P,3), means (K,3), precisions (K,3,3). Equal component weights, as the paper uses.
    """
    return whitened_mog_energy(pixels, *mog_whitening(means, precisions))


def mog_whitening(means: torch.Tensor, precisions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """With each precision factored as L L^T, the distance is ||x L - mu L||^2: returns the
    factors side by side (3, 3K) and the shifts mu_k L_k (1, 3K), computed once per solve (the
    Cholesky factorisation was a quarter of the term's time when repeated every iteration)."""
    k = len(means)
    factors = torch.linalg.cholesky(precisions)  # (K,3,3), precisions are symmetric positive definite
    stacked = factors.permute(1, 0, 2).reshape(3, 3 * k)  # column block k is L_k
    return stacked, means[:, None, :].matmul(factors).reshape(1, 3 * k)


def whitened_mog_energy(pixels: torch.Tensor, stacked: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """mog_energy from mog_whitening's factors: one (P,3) x (3,3K) product, a third of the time
    of the three-operand einsum, forward and backward."""
    whitened = (pixels @ stacked - shift).view(len(pixels), -1, 3)
    maha = (whitened * whitened).sum(-1)  # (P, K)
    return maha.min(dim=1).values.sum()


def total_variation(image: torch.Tensor, delta: float = 1e-6) -> torch.Tensor:
    """Eq. (11): vectorial (colour-coupled) isotropic total variation of a (3,H,W) image."""
    dx = image[:, :-1, 1:] - image[:, :-1, :-1]
    dy = image[:, 1:, :-1] - image[:, :-1, :-1]
    return torch.sqrt((dx * dx + dy * dy).sum(0) + delta).sum()
