"""Local gradient sharing (eq. 13-14): each pixel moves along a weighted mean of the
gradients in its n x n neighbourhood, weighted by spatial closeness and colour similarity.

Pixels whose own gradient vanishes early (and would stop moving) are carried along by
similar-looking neighbours; the colour kernel keeps the sharing from crossing a defect edge.
"""

from __future__ import annotations

import warnings

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


def sharing_matrix(weights: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """`share` restricted to the optimised pixels, as a sparse (P,P) matrix S: shared = S @ grad.

    Only the P pixels at the flat positions `flat_index` (P,) of the (H,W) crop have a gradient,
    and only their shared gradient is used, so sharing over the whole crop (an n*n-fold copy of
    it every iteration) is wasted work; S has at most n*n entries per row.
    """
    nn_, h, w = weights.shape
    r = int(round(nn_**0.5)) // 2
    device = flat_index.device
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")  # share's window order
    ys = (flat_index // w)[:, None] + dy.flatten().to(device)[None]
    xs = (flat_index % w)[:, None] + dx.flatten().to(device)[None]
    p = len(flat_index)
    variable = torch.full((h * w,), -1, dtype=torch.long, device=device)  # crop position -> pixel index
    variable[flat_index] = torch.arange(p, device=device)
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    neighbours = torch.where(inside, variable[ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)], -1)
    kept = neighbours >= 0  # a neighbour outside the crop or not optimised has no gradient to share
    rows = torch.cat([torch.zeros(1, dtype=torch.long, device=device), kept.sum(1).cumsum(0)])
    values = weights.flatten(1)[:, flat_index].T[kept]
    with warnings.catch_warnings():  # CSR is "beta"; its matrix product is all that is used, 18x faster than COO's
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(rows, neighbours[kept], values, (p, p), check_invariants=True)
