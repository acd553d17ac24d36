"""The pixel prior of F2PAD (eq. 9-10): a Gaussian mixture of normal pixel colours,
fitted by variational Bayes and used with equal component weights."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.mixture import BayesianGaussianMixture

from inspectd.errors import BundleError

PRIOR_FILE = "prior.npz"


@dataclass
class PixelPrior:
    means: np.ndarray  # (K, 3)
    precisions: np.ndarray  # (K, 3, 3)
    weights: np.ndarray  # (K,) kept for inspection; the energy ignores them (eq. 10)

    @classmethod
    def fit(cls, images: np.ndarray, n_components: int = 8, n_pixels: int = 20000, seed: int = 0,
            min_weight: float = 0.01) -> "PixelPrior":
        """Fit on `n_pixels` pixels sampled uniformly from (N,H,W,3) images in [0, 1]."""
        rng = np.random.default_rng(seed)
        flat = images.reshape(-1, 3)
        sample = flat[rng.choice(len(flat), size=min(n_pixels, len(flat)), replace=False)].astype(np.float64)
        gmm = BayesianGaussianMixture(n_components=n_components, covariance_type="full", max_iter=300,
                                      reg_covar=1e-4, random_state=seed, weight_concentration_prior=0.1)
        gmm.fit(sample)
        # Variational Bayes switches off unneeded components; drop them so the min-over-components
        # energy only sees colours that really occur.
        keep = gmm.weights_ >= min_weight
        return cls(gmm.means_[keep].astype(np.float32), gmm.precisions_[keep].astype(np.float32),
                   gmm.weights_[keep].astype(np.float32))

    def energy(self, pixels: np.ndarray) -> np.ndarray:
        """Per-pixel min-over-components Mahalanobis distance, (P,3) -> (P,)."""
        delta = pixels[:, None, :] - self.means[None]
        return np.einsum("pki,kij,pkj->pk", delta, self.precisions, delta).min(1)

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self.means).to(device), torch.from_numpy(self.precisions).to(device))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, means=self.means, precisions=self.precisions, weights=self.weights)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, name: str = PRIOR_FILE) -> "PixelPrior":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return cls(z["means"], z["precisions"], z["weights"])
        except Exception as exc:
            raise BundleError(f"{name}: unreadable pixel prior ({exc})") from exc
