"""Fitting a method and calibrating its thresholds with normal images only.

A share of train/good is held out of fitting. Cut-paste defects with random blob shapes are
pasted on those held-out images, and the thresholds are set where F1 is best on that
synthetic validation set: the pixel threshold (coarse mask, F2PAD's start) and the image
threshold (the screening decision). No test image and no test mask is looked at.
"""

from __future__ import annotations

import io
import json
import resource
import time
from pathlib import Path

import numpy as np

from inspectd.data.mvtec import load_train
from inspectd.data.synth import DefectSynthesizer, SynthConfig
from inspectd.eval import metrics
from inspectd.methods import create_method
from inspectd.refine.prior import PRIOR_FILE, PixelPrior

FIT_INFO_FILE = "fit.json"
REFERENCES_FILE = "references.npz"
MAX_REFERENCES = 32  # normal images kept for F2PAD's inpaint=nearest (~2 MB of PNG-like uint8 at 256 px)


def peak_memory_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(n * fraction)) if n >= 5 else 0
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def synthetic_validation(normals: np.ndarray, seed: int, per_image: int = 2):
    """Defective copies of `normals` with random-blob masks, plus the clean images."""
    synth = DefectSynthesizer(None, SynthConfig(size=normals.shape[1]), seed=seed)
    images, masks = [], []
    for i, base in enumerate(normals):
        others = [normals[j] for j in range(len(normals)) if j != i] or None
        for _ in range(per_image):
            img, mask = synth(base, others)
            images.append(img)
            masks.append(mask)
    images += list(normals)
    masks += [np.zeros(normals.shape[1:3], bool)] * len(normals)
    return np.stack(images), np.stack(masks)


def calibrate(method, normals: np.ndarray, seed: int) -> dict:
    images, masks = synthetic_validation(normals, seed)
    maps, scores = method.predict(images)
    labels = masks.reshape(len(masks), -1).any(1)
    pixel_thr, pixel_f1 = metrics.f1_optimal_threshold(masks, maps)
    image_thr, image_f1 = best_f1_threshold(labels, scores)
    return {"pixel": float(pixel_thr), "image": float(image_thr), "pixel_f1": float(pixel_f1),
            "image_f1": float(image_f1), "normal_image_max": float(scores[~labels].max())}


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    return float(thresholds[best]), float(f1[best])


def fit_and_calibrate(method_name: str, data: str | Path, out: str | Path, settings: dict | None = None,
                      holdout: float = 0.1, seed: int = 0, progress: bool = True, train: np.ndarray | None = None) -> dict:
    method = create_method(method_name, settings)
    if train is None:
        train = load_train(data, method.config.image_size, progress=progress)
    fit_idx, hold_idx = split_holdout(len(train), holdout, seed)
    started = time.perf_counter()
    method.fit(train[fit_idx], progress=progress)
    fit_seconds = time.perf_counter() - started
    prior = PixelPrior.fit(train[fit_idx], seed=seed)
    if len(hold_idx):
        calibration = calibrate(method, train[hold_idx], seed)
        method.thresholds = {"pixel": calibration["pixel"], "image": calibration["image"]}
    else:
        calibration = {"note": "too few training images to hold any out: no thresholds calibrated"}
    info = {"method": method_name, "data": str(data), "n_fit": int(len(fit_idx)), "n_holdout": int(len(hold_idx)),
            "fit_seconds": round(fit_seconds, 2), "peak_memory_gb": round(peak_memory_gb(), 3),
            "calibration": calibration, "seed": seed}
    method.save(out, extra={PRIOR_FILE: prior.to_bytes(), FIT_INFO_FILE: json.dumps(info, indent=2).encode(),
                            REFERENCES_FILE: references_bytes(train[fit_idx])})
    return {"bundle": str(out), **info}


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
    if not path.is_file():
        return None
    with np.load(path) as data:
        return data["images"].astype(np.float32) / 255.0


def load_prior(bundle_dir: str | Path) -> PixelPrior | None:
    path = Path(bundle_dir) / PRIOR_FILE
    return PixelPrior.from_bytes(path.read_bytes(), str(path)) if path.is_file() else None
