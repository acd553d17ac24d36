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


def sharing_matrix(image: torch.Tensor, active: torch.Tensor, flat_index: torch.Tensor, n: int,
                   sigma_spatial: float, sigma_colour: float) -> torch.Tensor:
    """`share` with `sharing_weights(image, active, ...)`, restricted to the optimised pixels, as a
    sparse (P,P) matrix S: shared = S @ grad.

    Only the P pixels at the flat positions `flat_index` (P,) of the (H,W) crop have a gradient,
    and only their shared gradient is used, so sharing over the whole crop (an n*n-fold copy of
    it every iteration) is wasted work; S has at most n*n entries per row. The weights are
    computed for those P pixels only, one neighbour offset at a time: never an n*n-fold copy of
    the crop (at native resolution a crop has millions of pixels, and that copy took gigabytes).
    A neighbour outside the crop or not active has no weight; one active but not optimised (a
    subset, as in re-estimation) keeps its share of the normalisation but has no gradient to give.
    """
    r = n // 2
    _, h, w = image.shape
    device = flat_index.device
    ys, xs = flat_index // w, flat_index % w
    colours = image.reshape(3, h * w)
    centre = colours[:, flat_index]
    active = active.reshape(h * w)
    p = len(flat_index)
    variable = torch.full((h * w,), -1, dtype=torch.long, device=device)  # crop position -> pixel index
    variable[flat_index] = torch.arange(p, device=device)
    weights, columns = [], []
    for dy in range(-r, r + 1):  # share's window order: rows of the window, then columns
        for dx in range(-r, r + 1):
            ny, nx = ys + dy, xs + dx
            inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
            at = ny.clamp(0, h - 1) * w + nx.clamp(0, w - 1)
            colour_d2 = ((colours[:, at] - centre) ** 2).sum(0)
            spatial = torch.exp(-torch.tensor(float(dy * dy + dx * dx)).to(image) / sigma_spatial)
            weight = spatial * torch.exp(-colour_d2 / sigma_colour)
            weights.append(weight * (inside & active[at]))
            columns.append(torch.where(inside, variable[at], -1))
    weights_ = torch.stack(weights)  # (n*n, P), normalised over the window as sharing_weights does
    weights_ = (weights_ / weights_.sum(0, keepdim=True).clamp_min(1e-12)).T
    columns_ = torch.stack(columns, 1)
    kept = columns_ >= 0
    rows = torch.cat([torch.zeros(1, dtype=torch.long, device=device), kept.sum(1).cumsum(0)])
    with warnings.catch_warnings():  # CSR is "beta"; its matrix product is all that is used, 18x faster than COO's
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(rows, columns_[kept], weights_[kept], (p, p), check_invariants=True)
