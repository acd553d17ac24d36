"""The files a bundle carries beside the method's own state, and how they are read back."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np

from inspectd.errors import BundleError
from inspectd.refine.prior import PRIOR_FILE, PixelPrior

log = logging.getLogger(__name__)

FIT_INFO_FILE = "fit.json"
REFERENCES_FILE = "references.npz"
CALIBRATION_FILE = "calibration.json"
CALIBRATION_VERSION = 2
MAX_REFERENCES = 32  # normal images kept for F2PAD's inpaint=nearest (~2 MB of uint8 at 256 px)


def references_bytes(normals: np.ndarray, limit: int = MAX_REFERENCES) -> bytes:
    """Up to `limit` fit images, evenly spread, as uint8: F2PAD's inpaint=nearest starts X_N from
    the one closest to the frame outside the defect."""
    pick = np.unique(np.linspace(0, len(normals) - 1, min(limit, len(normals))).round().astype(int))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=(np.clip(normals[pick], 0, 1) * 255 + 0.5).astype(np.uint8))
    return buffer.getvalue()


def load_references(bundle_dir: str | Path) -> np.ndarray | None:
    """(N,H,W,3) float32 normal images of a bundle, or None for a bundle written without them."""
    path = Path(bundle_dir) / REFERENCES_FILE
    return load_references_bytes(path.read_bytes()) if path.is_file() else None


def load_references_bytes(content: bytes) -> np.ndarray:
    with np.load(io.BytesIO(content)) as data:
        return data["images"].astype(np.float32) / 255.0


def load_prior(bundle_dir: str | Path) -> PixelPrior | None:
    path = Path(bundle_dir) / PRIOR_FILE
    return PixelPrior.from_bytes(path.read_bytes(), str(path)) if path.is_file() else None


def load_calibration(bundle_dir: str | Path) -> dict | None:
    """The chain's calibration written by `inspectd fit`, or None for a bundle from before it
    existed (the caller then falls back to the bundle's two thresholds and F2PAD's defaults)."""
    path = Path(bundle_dir) / CALIBRATION_FILE
    if not path.is_file():
        log.warning("%s: no %s (bundle written before deployed calibration): using its pixel/image thresholds "
                    "and F2PAD's library defaults; refit with `inspectd fit` for calibrated settings",
                    bundle_dir, CALIBRATION_FILE)
        return None
    try:
        calibration = json.loads(path.read_text())
        version = int(calibration["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: unreadable calibration ({exc})") from exc
    if version != CALIBRATION_VERSION:
        raise BundleError(f"{path}: calibration version {version}, this inspectd reads {CALIBRATION_VERSION}")
    return calibration


def load_tile(bundle_dir: str | Path) -> int | None:
    """The window size of a tile bundle (`inspectd fit --tile`), None for a whole-frame bundle."""
    tile = (load_calibration(bundle_dir) or {}).get("tile")
    return int(tile) if tile else None


def load_normal_scores(bundle_dir: str | Path) -> np.ndarray | None:
    """The held-out normal images' screening scores saved at fit (the drift reference), or None
    for a bundle fitted before they were saved."""
    calibration = load_calibration(bundle_dir)
    scores = (calibration or {}).get("drift_reference", {}).get("normal_scores")
    if not scores:
        return None
    try:
        values = np.asarray(scores, np.float64)
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if values.ndim != 1 or not np.isfinite(values).all():
        raise BundleError(f"{Path(bundle_dir) / CALIBRATION_FILE}: drift_reference.normal_scores is not a list of "
                          "finite numbers")
    return values
