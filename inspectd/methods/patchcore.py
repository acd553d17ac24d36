"""PatchCore (Roth et al., 2022): a coreset memory bank of locally aware patch features,
scored by the distance to the nearest memory feature."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from inspectd.features.backbone import BackboneConfig
from inspectd.methods import register_method
from inspectd.methods.base import AnomalyMethod, MethodConfig
from inspectd.methods.distances import cell_features, squared_distances
from inspectd.methods.padim import concat_layers


@dataclass
class PatchCoreConfig(MethodConfig):
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(layers=[2, 3]))
    neighbourhood: int = 3  # local aggregation window (avg pool) around each patch
    coreset_ratio: float = 0.1
    max_bank: int = 0  # cap on the memory bank size (0 = no cap); screening-sized banks use it
    projection_dim: int = 128  # random projection used only to pick the coreset
    coreset_chunk: int = 16384  # patches per greedy partition: keeps each pass in CPU cache
    score_chunk: int = 8192  # memory-bank rows per distance block when scoring


def greedy_coreset(x: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy k-center selection: repeatedly take the point farthest from those chosen."""
    n = x.shape[0]
    if k >= n:
        return torch.arange(n)
    sq = (x * x).sum(1)
    min_dist = torch.full((n,), float("inf"))
    chosen = torch.empty(k, dtype=torch.long)
    idx = 0  # deterministic start: the partition is already a random sample
    for i in range(k):
        chosen[i] = idx
        c = x[idx]
        torch.minimum(min_dist, sq - 2 * (x @ c) + c @ c, out=min_dist)
        idx = int(min_dist.argmax())
    return chosen


def partitioned_coreset(feats: torch.Tensor, ratio: float, proj_dim: int, chunk: int,
                        generator: torch.Generator, progress: bool = True) -> torch.Tensor:
    """Indices of a k-center coreset of `feats`, computed per random partition.

    A global greedy pass touches the whole bank once per pick (~16 ms per pick for 214k x 128
    on 2 cores, i.e. minutes). Greedy k-center on each part of a random partition, with the
    union taken as the coreset, is a composable coreset with a constant-factor guarantee for
    k-center, and each part fits in cache, so the whole selection takes seconds.
    """
    n, c = feats.shape
    if proj_dim and proj_dim < c:
        proj = torch.randn(c, proj_dim, generator=generator) / math.sqrt(proj_dim)
        feats = feats @ proj
    order = torch.randperm(n, generator=generator)
    parts = order.split(chunk)
    picks = []
    for part in tqdm(parts, desc="patchcore: coreset", unit="part", disable=not progress, leave=False):
        k = max(1, round(len(part) * ratio))
        picks.append(part[greedy_coreset(feats[part].contiguous(), k)])
    return torch.cat(picks)


def chunked_nearest(query: torch.Tensor, bank: torch.Tensor, chunk: int, k: int = 1):
    """Squared distances and indices of the k nearest bank rows for each query row.

    The bank is visited in blocks so memory stays at (Q x chunk + Q x k x C) whatever the bank
    size.
    """
    q_sq = (query * query).sum(1, keepdim=True)
    best_d = best_i = None
    for start in range(0, bank.shape[0], chunk):
        block = bank[start : start + chunk]
        d = q_sq - 2 * query @ block.T + (block * block).sum(1)[None]
        d_k, i_k = d.topk(min(k, d.shape[1]), dim=1, largest=False)
        i_k = i_k + start
        if best_d is not None:
            d_k, sel = torch.cat([best_d, d_k], 1).topk(k, dim=1, largest=False)
            i_k = torch.cat([best_i, i_k], 1).gather(1, sel)
        best_d, best_i = d_k, i_k
    # The expansion |q|^2 - 2 q.b + |b|^2 picks the neighbours fast but cancels badly for close
    # pairs (float32, large norms), and differently in each runtime: recompute the chosen
    # distances directly, which costs (Q x k x C) and makes torch and ONNX agree.
    exact = ((query[:, None, :] - bank[best_i]) ** 2).sum(-1)
    return exact, best_i


def candidate_sets(query: torch.Tensor, bank: torch.Tensor, chunk: int, k: int) -> torch.Tensor:
    """(Q,C) -> (Q,k,C): each query's k nearest bank rows. F2PAD searches once, on its initial
    estimate, then scores every iteration against these candidates only (paper eq. 5)."""
    _, idx = chunked_nearest(query, bank, chunk, k)
    return bank[idx]


@register_method
class PatchCore(AnomalyMethod):
    name = "patchcore"
    Config = PatchCoreConfig

    def __init__(self, config: PatchCoreConfig | None = None, load_weights: bool = True):
        super().__init__(config, load_weights)
        self.register_buffer("memory_bank", None)  # (M, C)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        k = self.config.neighbourhood
        maps = [F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False) for m in self.backbone(images)]
        return concat_layers(maps)

    def nearest(self, feats: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,C,h,w) -> squared distances and bank indices of the k nearest memory features."""
        b, c, h, w = feats.shape
        q = feats.permute(0, 2, 3, 1).reshape(-1, c)
        d, i = chunked_nearest(q, self.memory_bank, self.config.score_chunk, k)
        return d.reshape(b, h, w, -1), i.reshape(b, h, w, -1)

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        d, _ = self.nearest(feats, 1)
        # sqrt with a floor: distance 0 has an infinite derivative.
        return (d[..., 0] + 1e-12).sqrt()

    def refine_scorer(self, feats0: torch.Tensor, offset: tuple[int, int], cells: torch.Tensor, k: int = 10):
        """F2PAD eq. (5): the nearest-neighbour search runs once, on the initial estimate; the
        loss then takes the distance to the nearest of those k candidates per scored cell."""
        flat_cells = cells.flatten().nonzero()[:, 0]
        query = cell_features(feats0, flat_cells).contiguous()  # (L,C)
        candidates = candidate_sets(query, self.memory_bank, self.config.score_chunk, k)

        def scorer(feats: torch.Tensor) -> torch.Tensor:
            f = cell_features(feats, flat_cells)
            d2 = squared_distances(f, candidates).min(-1).values
            return (d2 + 1e-12).sqrt()

        return scorer

    def _fit(self, batches, n_images: int) -> None:
        feats = torch.cat([self.features(x).permute(0, 2, 3, 1).reshape(-1, self._channels()) for x in batches])
        gen = torch.Generator().manual_seed(self.config.seed)
        ratio = self.config.coreset_ratio
        if self.config.max_bank:
            ratio = min(ratio, self.config.max_bank / len(feats))
        idx = partitioned_coreset(feats, ratio, self.config.projection_dim, self.config.coreset_chunk, gen)
        self.memory_bank = feats[idx].contiguous()

    def _channels(self) -> int:
        return sum(self.backbone.channels)
