"""What F2PAD needs from a feature-level method, written down as a Protocol.

Any object with these members can be refined: the methods in inspectd/methods implement them
through AnomalyMethod, and a test or another library can supply its own. One member is optional:
`input_alignment` (int), the pixel step at which crops of an image give features on the full
image's grid (AnomalyMethod: its backbone's coarsest stride); F2PAD assumes 32 without it.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch


@runtime_checkable
class RefinableMethod(Protocol):
    name: str
    # False for a method whose scores cannot be differentiated w.r.t. the input pixels
    differentiable: bool
    # calibrated thresholds on the anomaly map ("pixel") and the image score ("image")
    thresholds: dict[str, float]

    @property
    def feature_stride(self) -> int:
        """Image pixels per cell of the feature map that the scorer reads."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0, 1] -> (B,C,h,w), differentiable."""

    def refine_scorer(self, feats0: torch.Tensor, offset: tuple[int, int],
                      cells: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The per-cell scores F2PAD minimises for a crop whose first cell is `offset` of the
        full-image grid, restricted to the bool cells (h,w), given the initial estimate's features."""

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> (B,H,W) coarse anomaly map at input resolution."""

    def to(self, device: torch.device) -> "RefinableMethod":
        ...
