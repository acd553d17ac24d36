"""DFR (Shi et al., 2020): deep feature reconstruction of multi-scale regional features.

Regional features: every selected backbone layer is average-pooled over a small window (a
region of the image whose size grows with the layer's stride), resized to the finest selected
grid and concatenated, so each cell describes its neighbourhood at several scales. A 1x1
convolutional autoencoder (a per-cell MLP: a 1x1 convolution is a linear map of the channels
at every location) reconstructs them; its bottleneck width is the number of principal
components that explain `explained_variance` of the normal features, decided at fit time and
stored in the config. Score: squared reconstruction error per cell (mean over channels).
Features are standardised per channel so that the deep layers, whose activations are small,
count as much as the shallow ones in both the PCA and the error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from inspectd.features.backbone import BackboneConfig
from inspectd.methods import register_method
from inspectd.methods.base import AnomalyMethod, MethodConfig
from inspectd.methods.padim import concat_layers
from inspectd.methods.training import cache_features, shows_progress, standardisation, step_count, training_steps


@dataclass
class DfrConfig(MethodConfig):
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(layers=[1, 2, 3, 4]))
    region: int = 3  # average-pooling window (cells of each layer) that makes a feature regional
    explained_variance: float = 0.9  # PCA criterion for the latent width
    latent_dim: int = 0  # 0 = decide by PCA at fit time; the fitted width is stored here
    epochs: float = 10.0  # passes over all cached training feature vectors
    vectors_per_step: int = 1024
    lr: float = 1e-3  # Adam, cosine-decayed to 0 over the budget
    pca_vectors: int = 200_000


def build_autoencoder(channels: int, latent: int) -> nn.Sequential:
    """DFR's widths: C -> (C+2L)/2 -> 2L -> L -> 2L -> (C+2L)/2 -> C, ReLU between layers."""
    mid = (channels + 2 * latent) // 2
    widths = [channels, mid, 2 * latent, latent, 2 * latent, mid, channels]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i not in (2, len(widths) - 2):  # linear bottleneck and linear output
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def pca_width(vectors: torch.Tensor, explained: float) -> int:
    """Smallest number of principal components whose variance share reaches `explained`."""
    centred = vectors - vectors.mean(0)
    eigvals = torch.linalg.eigvalsh(centred.T.double() @ centred.double()).flip(0).clamp_min(0)
    share = eigvals.cumsum(0) / eigvals.sum()
    return int((share < explained).sum()) + 1


@register_method
class Dfr(AnomalyMethod):
    name = "dfr"
    Config = DfrConfig

    def __init__(self, config: DfrConfig | None = None, load_weights: bool = True):
        super().__init__(config, load_weights)
        total = sum(self.backbone.channels)
        self.register_buffer("feature_mean", torch.zeros(total))
        self.register_buffer("feature_std", torch.ones(total))
        self.autoencoder = self._build(self.config.latent_dim) if self.config.latent_dim > 0 else None

    def _build(self, latent: int) -> nn.Sequential:
        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            return build_autoencoder(sum(self.backbone.channels), latent).requires_grad_(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        k = self.config.region
        return concat_layers([F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False)
                              for m in self.backbone(images)])

    def reconstruction_error(self, vectors: torch.Tensor) -> torch.Tensor:
        """(n, C) raw regional features -> (n,) mean squared error of their reconstruction."""
        x = (vectors - self.feature_mean) / self.feature_std
        return ((self.autoencoder(x) - x) ** 2).mean(1)

    def score_features(self, feats: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feats.shape
        return self.reconstruction_error(feats.permute(0, 2, 3, 1).reshape(b * h * w, c)).reshape(b, h, w)

    def _fit(self, batches, n_images: int) -> None:
        cfg = self.config
        progress = shows_progress(batches)
        cache = cache_features(self.features, batches)
        self.feature_mean, self.feature_std = standardisation(cache.vectors, sample=cfg.pca_vectors, seed=cfg.seed)
        if cfg.latent_dim <= 0:
            sample = cache.vectors[torch.randperm(len(cache), generator=torch.Generator().manual_seed(cfg.seed))
                                   [: cfg.pca_vectors]]
            cfg.latent_dim = pca_width((sample - self.feature_mean) / self.feature_std, cfg.explained_variance)
        self.autoencoder = self._build(cfg.latent_dim)
        with torch.enable_grad():
            self._train_autoencoder(cache, progress)

    def _train_autoencoder(self, cache, progress: bool) -> None:
        cfg = self.config
        self.autoencoder.requires_grad_(True)
        n_steps = step_count(len(cache), cfg.vectors_per_step, cfg.epochs)
        optimiser = torch.optim.Adam(self.autoencoder.parameters(), lr=cfg.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, n_steps)
        for index, bar in training_steps(len(cache), cfg.vectors_per_step, n_steps, cfg.seed, "dfr: autoencoder", progress):
            loss = self.reconstruction_error(cache.vectors[index]).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.set_postfix(mse=f"{loss.item():.4f}", refresh=False)
        optimiser.zero_grad(set_to_none=True)  # no training gradients left in the fitted model
        self.autoencoder.requires_grad_(False)
