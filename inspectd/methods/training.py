"""Training learned scorers (CFLOW's flows, CFA's descriptor, DFR's autoencoder) on cached features.

The backbone is frozen, so its features are computed once per training image. Each training
step then draws a random batch of feature vectors (with their grid positions) from the whole
training set: many images contribute to every step, and no step re-runs the backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class VectorCache:
    """Feature vectors of all training locations, as rows, and the grid they came from."""

    vectors: torch.Tensor  # (N*h*w, C), rows in (image, row, col) order
    grid: tuple[int, int]  # (h, w)

    @classmethod
    def from_maps(cls, maps: torch.Tensor) -> "VectorCache":
        n, c, h, w = maps.shape
        return cls(maps.permute(0, 2, 3, 1).reshape(n * h * w, c).contiguous(), (h, w))

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def cells(self, index: torch.Tensor) -> torch.Tensor:
        """Flat grid cell (row * w + col) of each row in `index`."""
        return index % (self.grid[0] * self.grid[1])


def cache_features(features_fn, batches) -> VectorCache:
    return VectorCache.from_maps(torch.cat([features_fn(images) for images in batches]))


def shows_progress(batches) -> bool:
    """fit() hands _fit a tqdm iterator: training bars follow its on/off switch."""
    return not getattr(batches, "disable", False)


def step_count(n_vectors: int, batch_size: int, epochs: float) -> int:
    """Steps that make `epochs` passes' worth of batches over `n_vectors` rows."""
    return max(1, math.ceil(epochs * n_vectors / batch_size))


def training_steps(n_vectors: int, batch_size: int, steps: int, seed: int, desc: str, progress: bool = True):
    """`steps` random index batches over `n_vectors` rows, with a progress bar.

    Yields (index tensor, bar) so the loop can show its loss on the bar."""
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, leave=False)
    for _ in bar:
        yield torch.randint(n_vectors, (min(batch_size, n_vectors),), generator=gen), bar


def standardisation(vectors: torch.Tensor, sample: int = 200_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (floored) of the rows, estimated on at most `sample` rows."""
    if len(vectors) > sample:
        vectors = vectors[torch.randperm(len(vectors), generator=torch.Generator().manual_seed(seed))[:sample]]
    return vectors.mean(0), vectors.std(0).clamp_min(1e-6)
