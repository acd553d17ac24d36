"""CFA (Lee et al., 2022): coupled-hypersphere-based feature adaptation.

A learnable patch descriptor (a 1x1 CoordConv: a linear map of the frozen backbone's feature
plus the cell's row/column coordinates) adapts the features to the target parts. The memory
bank is the descriptor's output averaged over the training images at every grid cell (optionally
reduced by k-means), so its size is fixed by the grid, not by the number of training images.

Training pulls every normal feature inside a small hypersphere (radius r) around each of its K
nearest memory features and pushes the next J memory features out beyond r^2 + margin (squared
distances), so that normal features become dense around the memory and anomalies stand out.
Score: the squared distance to the nearest memory feature, weighted by its softmin weight among
the K nearest (CFA's soft score: about d/K among many near neighbours, d for isolated ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from inspectd.features.backbone import BackboneConfig
from inspectd.methods import register_method
from inspectd.methods.base import AnomalyMethod, MethodConfig
from inspectd.methods.distances import cell_features, squared_distances
from inspectd.methods.padim import concat_layers
from inspectd.methods.patchcore import candidate_sets, chunked_nearest
from inspectd.methods.training import cache_features, shows_progress, standardisation, step_count, training_steps


@dataclass
class CfaConfig(MethodConfig):
    # the first three stages, as CFA's reference uses ResNet's layer1-3: the stride-4 grid is the
    # memory's resolution (Lite0 layers 2+3 alone: pixel AUROC 0.972 on bottle, 1-3: 0.980)
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(layers=[1, 2, 3]))
    neighbourhood: int = 3  # local average of the backbone maps before the descriptor, as CFA does
    descriptor_ratio: int = 1  # gamma_d: descriptor width = backbone channels // ratio
    bank_ratio: int = 1  # gamma_c: memory size = grid cells // ratio (k-means when > 1)
    attract: int = 3  # K: nearest memory features pulled within the radius (also the score's K)
    repel: int = 3  # J: the next memory features pushed beyond radius^2 + margin
    radius: float = 1e-5
    margin: float = 0.1
    epochs: float = 10.0  # passes over all cached training feature vectors
    vectors_per_step: int = 1024
    lr: float = 1e-3  # AdamW with AMSGrad and weight decay, as the CFA authors train
    weight_decay: float = 5e-4
    kmeans_iters: int = 25
    score_chunk: int = 8192  # memory rows per distance block when scoring


class CoordDescriptor(nn.Module):
    """1x1 CoordConv applied to feature vectors: a linear map of [feature, row, col]."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.linear = nn.Linear(channels_in + 2, channels_out)

    def forward(self, vectors: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([vectors, coords], dim=1))


def softmin_score(dists: torch.Tensor) -> torch.Tensor:
    """(n, K) ascending squared distances -> (n,) softmin weight of the nearest times its distance."""
    return F.softmin(dists, dim=1)[:, 0] * dists[:, 0]


def kmeans(points: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means from k distinct random points; empty clusters keep their centre."""
    centres = points[torch.randperm(len(points), generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


@register_method
class Cfa(AnomalyMethod):
    name = "cfa"
    Config = CfaConfig

    def __init__(self, config: CfaConfig | None = None, load_weights: bool = True):
        super().__init__(config, load_weights)
        total = sum(self.backbone.channels)
        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            self.descriptor = CoordDescriptor(total, max(1, total // self.config.descriptor_ratio))
        self.descriptor.requires_grad_(False)  # trained only inside _fit; F2PAD differentiates the input only
        self.register_buffer("feature_mean", torch.zeros(total))
        self.register_buffer("feature_std", torch.ones(total))
        self.register_buffer("memory_bank", None)  # (M, D)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        k = self.config.neighbourhood
        return concat_layers([F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False)
                              for m in self.backbone(images)])

    @property
    def grid_side(self) -> int:
        return -(-self.config.image_size // self.feature_stride)

    def coords(self, offset: tuple[int, int], h: int, w: int, device) -> torch.Tensor:
        """(h*w, 2) row/column coordinates in [-1, 1] of the full grid, for a window at `offset`."""
        scale = 2.0 / max(self.grid_side - 1, 1)
        rows = torch.arange(offset[0], offset[0] + h, device=device, dtype=torch.float32) * scale - 1
        cols = torch.arange(offset[1], offset[1] + w, device=device, dtype=torch.float32) * scale - 1
        return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=2).reshape(h * w, 2)

    def describe(self, vectors: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.descriptor((vectors - self.feature_mean) / self.feature_std, coords)

    def nearest_memory(self, described: torch.Tensor, k: int) -> torch.Tensor:
        """(n, D) -> (n, k) ascending squared distances to the memory bank (differentiable)."""
        d, _ = chunked_nearest(described, self.memory_bank, self.config.score_chunk, k)
        return d

    def score_features_at(self, feats: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
        b, c, h, w = feats.shape
        coords = self.coords(offset, h, w, feats.device).repeat(b, 1)
        described = self.describe(feats.permute(0, 2, 3, 1).reshape(b * h * w, c), coords)
        return softmin_score(self.nearest_memory(described, self.config.attract)).reshape(b, h, w)

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.score_features_at(feats, (0, 0))

    def refine_scorer(self, feats0: torch.Tensor, offset: tuple[int, int], cells: torch.Tensor, k: int = 10):
        """As PatchCore's F2PAD loss (eq. 5): the memory search runs once, on the initial
        estimate; each iteration then scores against those k candidates per cell only, which
        keeps an iteration cheap whatever the memory size."""
        _, c, h, w = feats0.shape
        flat_cells = cells.flatten().nonzero()[:, 0]
        coords = self.coords(offset, h, w, feats0.device)[flat_cells]
        described0 = self.describe(cell_features(feats0, flat_cells), coords)
        candidates = candidate_sets(described0, self.memory_bank, self.config.score_chunk, max(k, self.config.attract))

        def scorer(feats: torch.Tensor) -> torch.Tensor:
            described = self.describe(cell_features(feats, flat_cells), coords)
            d2 = squared_distances(described, candidates)
            return softmin_score(d2.topk(self.config.attract, dim=1, largest=False).values)

        return scorer

    def _fit(self, batches, n_images: int) -> None:
        progress = shows_progress(batches)
        cache = cache_features(self.features, batches)
        self.feature_mean, self.feature_std = standardisation(cache.vectors, seed=self.config.seed)
        h, w = cache.grid
        coord_table = self.coords((0, 0), h, w, cache.vectors.device)
        self.memory_bank = self._initial_memory(cache, coord_table)
        with torch.enable_grad():
            self._train_descriptor(cache, coord_table, progress)

    def _initial_memory(self, cache, coord_table: torch.Tensor) -> torch.Tensor:
        """The untrained descriptor's output averaged over images at every cell (the descriptor
        is affine, so that is the descriptor of the per-cell mean feature), then k-means."""
        cells = cache.grid[0] * cache.grid[1]
        mean_features = cache.vectors.view(-1, cells, cache.vectors.shape[1]).mean(0)
        memory = self.describe(mean_features, coord_table)
        size = max(1, cells // self.config.bank_ratio)
        if size < cells:
            memory = kmeans(memory, size, self.config.kmeans_iters, torch.Generator().manual_seed(self.config.seed))
        return memory.contiguous()

    def _train_descriptor(self, cache, coord_table: torch.Tensor, progress: bool) -> None:
        cfg = self.config
        k, j = cfg.attract, cfg.repel
        r2 = cfg.radius**2
        self.descriptor.requires_grad_(True)
        optimiser = torch.optim.AdamW(self.descriptor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      amsgrad=True)
        n_steps = step_count(len(cache), cfg.vectors_per_step, cfg.epochs)
        for index, bar in training_steps(len(cache), cfg.vectors_per_step, n_steps, cfg.seed, "cfa: descriptor", progress):
            d = self.nearest_memory(self.describe(cache.vectors[index], coord_table[cache.cells(index)]), k + j)
            attract = F.relu(d[:, :k] - r2).mean()
            repel = F.relu(r2 + cfg.margin - d[:, k:]).mean()
            loss = attract + repel
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            bar.set_postfix(attract=f"{attract.item():.4f}", repel=f"{repel.item():.4f}", refresh=False)
        optimiser.zero_grad(set_to_none=True)  # no training gradients left in the fitted model
        self.descriptor.requires_grad_(False)
