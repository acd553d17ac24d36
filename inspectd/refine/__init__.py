"""F2PAD: turn a coarse feature-level anomaly map into a pixel-accurate mask by optimisation."""

from inspectd.refine.f2pad import RefineResult, refine, refine_native
from inspectd.refine.prior import PixelPrior
from inspectd.refine.settings import F2PADSettings

__all__ = ["F2PADSettings", "PixelPrior", "RefineResult", "refine", "refine_native"]
