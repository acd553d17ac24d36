"""Local gradient sharing (eq. 13-14): each pixel moves along a weighted mean of the
gradients in its n x n neighbourhood, weighted by spatial closeness and colour similarity.

Pixels whose own gradient vanishes early (and would stop moving) are carried along by
similar-looking neighbours; the colour kernel keeps the sharing from crossing a defect edge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sharing_weights(image: torch.Tensor, active: torch.Tensor, n: int, sigma_spatial: float,
                    sigma_colour: float) -> torch.Tensor:
    """Weights (n*n, H, W) for a (3,H,W) image; only `active` (H,W bool) neighbours share.

    For each pixel the weights over its neighbourhood sum to 1 (every pixel is its own
    neighbour, so the sum is never empty for an active pixel).
    """
    r = n // 2
    _, h, w = image.shape
    patches = F.unfold(image[None], n, padding=r).view(3, n * n, h, w)  # neighbours' colours
    colour_d2 = ((patches - image[:, None]) ** 2).sum(0)
    ys, xs = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    spatial_d2 = (ys * ys + xs * xs).to(image).reshape(n * n, 1, 1)
    weights = torch.exp(-spatial_d2 / sigma_spatial) * torch.exp(-colour_d2 / sigma_colour)
    neighbour_active = F.unfold(active[None, None].to(image), n, padding=r).view(n * n, h, w)
    weights = weights * neighbour_active
    return weights / weights.sum(0, keepdim=True).clamp_min(1e-12)


def share(grad: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Apply sharing weights (n*n,H,W) to a gradient image (3,H,W)."""
    nn_, h, w = weights.shape
    n = int(round(nn_ ** 0.5))
    patches = F.unfold(grad[None], n, padding=n // 2).view(3, nn_, h, w)
    return (patches * weights[None]).sum(1)
