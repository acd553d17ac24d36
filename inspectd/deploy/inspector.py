"""The inspection chain, once: screen -> frame decision -> coarse mask -> F2PAD -> defects.

The refiner process, `inspectd demo`, `inspectd eval --deployed`, the calibration at fit time
and the benches all call this, so every rule (which threshold flags a frame, which one starts
F2PAD, when a refined mask is a defect) lives here and what is measured is what runs.

Screening is for recall: a frame is flagged when its image score passes `screen_threshold`.
Refinement is for precision: F2PAD removes what its features find normal, and the frame is a
"defect" only when a connected region of at least `min_defect_area_px` pixels is left.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from inspectd.errors import BundleError, ConfigError, InspectdError
from inspectd.geometry import measure_defects
from inspectd.refine import F2PADSettings, refine
from inspectd.refine.contract import RefinableMethod
from inspectd.refine.f2pad import resolve_device

log = logging.getLogger(__name__)
DEFECT, OK = "defect", "ok"
MIN_DEFECT_AREA_PX = 4  # default smallest reported region, for bundles without calibration


@dataclass
class ChainSettings:
    """Every threshold and setting of the chain; written by the fit's calibration into the bundle."""

    screen_threshold: float  # image score above which a frame is flagged
    pixel_threshold: float  # coarse-map threshold: the region F2PAD starts from
    min_defect_area_px: int = MIN_DEFECT_AREA_PX  # smaller regions left after F2PAD are not defects
    f2pad: F2PADSettings = field(default_factory=F2PADSettings)
    # a tile bundle's frame threshold when it screens a native frame in windows (screening.tiles):
    # a frame's score is its highest window's; None (a whole-frame or older bundle): screen_threshold
    tiled_screen_threshold: float | None = None

    def __post_init__(self):
        for name in ("screen_threshold", "pixel_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ConfigError(f"chain: {name} must be a finite number, got {value!r}")
        if int(self.min_defect_area_px) < 1:
            raise ConfigError(f"chain: min_defect_area_px must be >= 1, got {self.min_defect_area_px}")

    def frame_threshold(self, tiled: bool = False) -> float:
        """The score above which a frame is flagged, screened whole or in windows."""
        if tiled and self.tiled_screen_threshold is not None:
            return self.tiled_screen_threshold
        return self.screen_threshold

    def to_dict(self) -> dict:
        return {**asdict(self), "f2pad": self.f2pad.to_dict()}

    @classmethod
    def from_calibration(cls, calibration: dict | None, thresholds: dict[str, float]) -> "ChainSettings":
        """From a bundle's calibration.json; an older bundle (None) keeps its two thresholds and
        the library's F2PAD defaults, which is how the chain behaved before calibration."""
        if calibration is None:
            if "pixel" not in thresholds:
                raise InspectdError("bundle has neither calibration.json nor a pixel threshold: refit it")
            pixel = float(thresholds["pixel"])
            return cls(screen_threshold=float(thresholds.get("image", pixel)), pixel_threshold=pixel)
        try:
            chain = calibration["chain"]
            return cls(screen_threshold=float(chain["screen_threshold"]),
                       pixel_threshold=float(chain["pixel_threshold"]),
                       min_defect_area_px=int(chain["min_defect_area_px"]),
                       f2pad=F2PADSettings.from_dict(chain.get("f2pad", {})),
                       tiled_screen_threshold=optional_float(chain.get("tiled_screen_threshold")))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"calibration.json: malformed chain settings ({exc!r})") from exc

    def override(self, screen_threshold: float | None = None, min_defect_area_px: int | None = None,
                 f2pad: dict | None = None) -> "ChainSettings":
        """The line's own settings on top of the bundle's (None / empty: keep the bundle's)."""
        return ChainSettings(
            screen_threshold=self.screen_threshold if screen_threshold is None else float(screen_threshold),
            pixel_threshold=self.pixel_threshold,
            min_defect_area_px=self.min_defect_area_px if min_defect_area_px is None else int(min_defect_area_px),
            f2pad=self.f2pad.replace(**(f2pad or {})),
            # the line's threshold is the one its frames are flagged at, however they are screened
            tiled_screen_threshold=self.tiled_screen_threshold if screen_threshold is None else float(screen_threshold))


def optional_float(value) -> float | None:
    return None if value is None else float(value)


@dataclass
class Inspection:
    """One frame through the chain. Masks are (H,W) bool at the frame's size."""

    score: float  # screening image score
    flagged: bool  # screening decision
    decision: str  # "defect" | "ok" ("ok" for a frame screening did not flag)
    coarse_map: np.ndarray  # (H,W) float32 anomaly map
    coarse_mask: np.ndarray  # what F2PAD started from (empty when not flagged)
    mask: np.ndarray  # the final mask: regions of at least min_defect_area_px
    defects: list[dict]
    refine_seconds: float | None = None  # None when the frame was not refined
    stats: dict = field(default_factory=dict)
    # ||A|| per pixel when F2PAD solved (the calibration re-thresholds it); None otherwise
    anomaly_magnitude: np.ndarray | None = None
    normal: np.ndarray | None = None  # X_N, the recovered normal image, when refined


def coarse_threshold(settings: ChainSettings, peak: float) -> float:
    """The coarse-mask rule. A flagged frame whose map passes the pixel threshold starts from it;
    one flagged below it (a line may screen lower than the bundle) starts from the screening
    threshold, so F2PAD always has a region to judge."""
    if peak > settings.pixel_threshold:
        return settings.pixel_threshold
    return min(settings.pixel_threshold, settings.screen_threshold)


def judge(mask: np.ndarray, score_map: np.ndarray | None, min_area_px: int,
          px_per_mm: float | None = None) -> tuple[str, list[dict], np.ndarray]:
    """The frame decision after refinement: (decision, defects, mask without the small regions)."""
    defects = measure_defects(mask, score_map, px_per_mm, min_area_px)
    if len(defects) == 0 or not np.asarray(mask).any():
        return OK, [], np.zeros(np.shape(mask), bool)
    mask = np.asarray(mask, bool)
    if sum(d["area_px"] for d in defects) != int(np.count_nonzero(mask)):
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        big = np.nonzero(stats[:, cv2.CC_STAT_AREA] >= min_area_px)[0]
        mask = np.isin(labels, big[big > 0])
    return DEFECT, defects, mask


class Inspector:
    """A fitted method, its pixel prior and reference images, and the chain's settings."""

    def __init__(self, method: RefinableMethod, settings: ChainSettings, prior=None,
                 references: np.ndarray | None = None, device: str = "auto"):
        if settings.f2pad.inpaint == "nearest" and references is None:
            raise InspectdError("F2PAD inpaint=nearest needs the bundle's reference images (references.npz, "
                                "written by `inspectd fit`); refit, or set refiner.f2pad.inpaint: telea")
        self.method, self.prior, self.references = method, prior, references
        self.device = resolve_device(device)
        self.method.to(self.device)
        self.settings = dataclasses.replace(settings, f2pad=settings.f2pad.replace(device=self.device.type))

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, device: str = "auto", screen_threshold: float | None = None,
                    min_defect_area_px: int | None = None, f2pad: dict | None = None) -> "Inspector":
        """The bundle's chain, with the line's overrides (None / empty keep the bundle's)."""
        from inspectd.bundle import load_calibration, load_prior, load_references
        from inspectd.methods import load_method

        method = load_method(bundle_dir)
        chain = ChainSettings.from_calibration(load_calibration(bundle_dir), method.thresholds)
        chain = chain.override(screen_threshold, min_defect_area_px, f2pad)
        return cls(method, chain, load_prior(bundle_dir), load_references(bundle_dir), device)

    @property
    def image_size(self) -> int:
        return int(self.method.config.image_size)

    @property
    def model_id(self) -> str:
        return str(getattr(self.method, "model_id", self.method.name))

    def screen(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Eager torch screening: (anomaly map (H,W), image score). The daemon's capture runs the
        same graph in ONNX Runtime."""
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
            amap = self.method.anomaly_map(x.permute(2, 0, 1)[None])[0]
        return amap.cpu().numpy(), float(amap.max())

    def flagged(self, score: float) -> bool:
        return bool(float(score) > self.settings.screen_threshold)

    def refine(self, image: np.ndarray, coarse_map: np.ndarray | None = None, score: float | None = None,
               px_per_mm: float | None = None) -> Inspection:
        """A flagged frame: coarse mask -> F2PAD -> defects. The coarse map is recomputed when not
        given (only its summary travels with the frame)."""
        if coarse_map is None:
            coarse_map, peak = self.screen(image)
        else:
            peak = float(np.max(coarse_map))
        score = peak if score is None else float(score)
        s = self.settings
        threshold = coarse_threshold(s, peak)
        result = refine(image, self.method, coarse_map, self.prior, s.f2pad.replace(threshold=threshold),
                        self.references)
        decision, defects, mask = judge(result.mask, coarse_map, s.min_defect_area_px, px_per_mm)
        stats = {"seconds": result.stats["seconds"], "iterations": result.stats["iterations"],
                 "status": result.stats["status"], "coarse_threshold": threshold, "device": self.device.type}
        solved = result.stats["status"] == "refined"
        return Inspection(score=score, flagged=True, decision=decision, coarse_map=coarse_map,
                          coarse_mask=result.coarse_mask, mask=mask, defects=defects,
                          refine_seconds=float(result.stats["seconds"]), stats=stats,
                          anomaly_magnitude=result.anomaly_magnitude if solved else None, normal=result.normal)

    def inspect(self, image: np.ndarray, px_per_mm: float | None = None) -> Inspection:
        """The whole chain on one frame (H,W,3) float32 in [0, 1] at the bundle's size."""
        started = time.perf_counter()
        coarse_map, score = self.screen(image)
        if not self.flagged(score):
            empty = np.zeros(coarse_map.shape, bool)
            return Inspection(score=score, flagged=False, decision=OK, coarse_map=coarse_map, coarse_mask=empty,
                              mask=empty, defects=[], stats={"screen_seconds": time.perf_counter() - started})
        return self.refine(image, coarse_map, score, px_per_mm)
