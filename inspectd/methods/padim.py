"""PaDiM (Defard et al., 2021): a Gaussian per feature location, scored by Mahalanobis distance."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from inspectd.features.backbone import BackboneConfig
from inspectd.methods import register_method
from inspectd.methods.base import AnomalyMethod, MethodConfig
from inspectd.methods.distances import cell_features, quadratic_form, symmetrised


@dataclass
class PadimConfig(MethodConfig):
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(layers=[1, 2, 3]))
    n_features: int = 100  # random channel subset, as in the paper
    covariance_reg: float = 0.01  # added to the diagonal so the covariance is invertible
    # Pixels per cell of the scored grid; 0 = the finest selected layer's stride. A coarser grid
    # (finer layers average-pooled into it) has fewer Gaussians to evaluate per frame: the
    # screening-sized PaDiM, since F2PAD draws the exact outline afterwards anyway.
    grid_stride: int = 0


def concat_layers(maps: list[torch.Tensor], size=None) -> torch.Tensor:
    """Upsample every map to `size` (default: the largest map) and concatenate along channels."""
    size = tuple(maps[0].shape[-2:]) if size is None else tuple(size)
    ups = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
           for m in maps]
    return torch.cat(ups, dim=1)


@register_method
class Padim(AnomalyMethod):
    name = "padim"
    Config = PadimConfig

    def __init__(self, config: PadimConfig | None = None, load_weights: bool = True):
        super().__init__(config, load_weights)
        total = sum(self.backbone.channels)
        d = min(self.config.n_features, total)
        gen = torch.Generator().manual_seed(self.config.seed)
        self.register_buffer("channel_index", torch.randperm(total, generator=gen)[:d].sort().values)
        # The same subset split per layer, so unselected channels are never resized.
        starts = [sum(self.backbone.channels[:i]) for i in range(len(self.backbone.channels))]
        self._layer_channels = [
            (self.channel_index[(self.channel_index >= a) & (self.channel_index < a + c)] - a).tolist()
            for a, c in zip(starts, self.backbone.channels)
        ]
        self.register_buffer("mean", None)  # (L, d)
        self.register_buffer("inv_cov", None)  # (L, d, d)

    @property
    def feature_stride(self) -> int:
        return self.config.grid_stride or self.backbone.strides[0]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        maps = [m[:, keep] for m, keep in zip(self.backbone(images), self._layer_channels)]
        grid = self.config.grid_stride
        if grid:  # average-pool the layers finer than the grid into it (ceil: as the backbone pads)
            maps = [F.avg_pool2d(m, grid // s, ceil_mode=True) if s < grid else m
                    for m, s in zip(maps, self.backbone.strides)]
            size = tuple(math.ceil(n / grid) for n in images.shape[-2:])
        else:
            size = maps[0].shape[-2:]
        return concat_layers([m for m in maps if m.shape[1]], size)

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        b, d, h, w = feats.shape
        delta = feats.flatten(2).permute(2, 0, 1) - self.mean[:, None, :]  # (L, B, d)
        # one batched matrix product: much faster than the equivalent einsum in ONNX Runtime
        maha = (torch.bmm(delta, self.inv_cov) * delta).sum(-1)
        return maha.permute(1, 0).reshape(b, h, w)

    def _fit(self, batches, n_images: int) -> None:
        # Streamed sums in float64: the covariance of ~200 images never needs all features in memory.
        total = outer = None
        count = 0
        for images in batches:
            f = self.features(images).flatten(2).double()  # (b, d, L)
            if total is None:
                total = torch.zeros(f.shape[2], f.shape[1], dtype=torch.float64)
                outer = torch.zeros(f.shape[2], f.shape[1], f.shape[1], dtype=torch.float64)
            total += f.sum(0).T
            outer += torch.einsum("bdl,bel->lde", f, f)
            count += f.shape[0]
        mean = total / count
        cov = (outer - count * mean[:, :, None] * mean[:, None, :]) / max(count - 1, 1)
        cov += self.config.covariance_reg * torch.eye(cov.shape[-1], dtype=cov.dtype)
        self.mean = mean.float()
        self.inv_cov = torch.linalg.inv(cov).float()

    def window_index(self, offset: tuple[int, int], h: int, w: int, device) -> torch.Tensor:
        """Flat indices of an (h, w) window of the full feature grid starting at `offset`."""
        side = math.ceil(self.config.image_size / self.feature_stride)
        rows = torch.arange(offset[0], offset[0] + h, device=device).clamp_max(side - 1)
        cols = torch.arange(offset[1], offset[1] + w, device=device).clamp_max(side - 1)
        return (rows[:, None] * side + cols[None, :]).flatten()

    def score_features_at(self, feats: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
        b, _, h, w = feats.shape
        index = self.window_index(offset, h, w, feats.device)
        return self._mahalanobis(feats.flatten(2), index).permute(1, 0).reshape(b, h, w)

    def _mahalanobis(self, flat_feats: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B,d,L) features at grid cells `index` (L,) -> (L,B) squared Mahalanobis distances."""
        delta = flat_feats.permute(2, 0, 1) - self.mean[index][:, None, :]
        return (torch.bmm(delta, self.inv_cov[index]) * delta).sum(-1)

    def refine_scorer(self, feats0: torch.Tensor, offset: tuple[int, int], cells: torch.Tensor):
        # Each location has its own Gaussian: gather the statistics of the scored cells once.
        _, _, h, w = feats0.shape
        flat_cells = cells.flatten().nonzero()[:, 0]
        index = self.window_index(offset, h, w, feats0.device)[flat_cells]
        mean, inv_cov = self.mean[index], symmetrised(self.inv_cov[index])

        def scorer(feats: torch.Tensor) -> torch.Tensor:
            delta = cell_features(feats, flat_cells) - mean  # (L,d)
            return quadratic_form(delta, inv_cov)

        return scorer
