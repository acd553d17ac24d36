"""Generated camera-size frames and an MVTec-layout set of small defects on them.

A line camera delivers megapixel frames whose defects can be a few tens of pixels across: a
screening bundle sees such a defect as a few of its pixels, so its mask, upsampled, is drawn in
blocks. These frames (brick texture tiled at the camera's scale, sensor noise) and their stains
(a tilted ellipse, often with a thin tail, brighter or darker than the part) measure what
refining at the camera's own pixels gains there (`inspectd bench native-accuracy`).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from inspectd.errors import InspectdError

STAIN_TYPE = "stain"


def camera_frame(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 RGB at the camera's scale: brick tiled with an offset, plus sensor noise."""
    from skimage import data as skdata

    brick = skdata.brick()
    h, w = hw
    rng = np.random.default_rng(seed)
    big = np.tile(brick, (h // brick.shape[0] + 2, w // brick.shape[1] + 2))
    y, x = rng.integers(0, brick.shape[0]), rng.integers(0, brick.shape[1])
    grey = big[y:y + h, x:x + w].astype(np.int16) + rng.integers(-6, 7, (h, w), dtype=np.int16)
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def stain_mask(hw: tuple[int, int], length_px: float, rng: np.random.Generator) -> np.ndarray:
    """A tilted ellipse `length_px` long (1.5 to 4 times longer than wide), with a thin tail in
    two cases of three, placed wholly inside the frame with a margin."""
    h, w = hw
    half_long = max(2, int(length_px / 2))
    half_short = max(1, int(half_long / rng.uniform(1.5, 4.0)))
    reach = 2 * half_long  # the tail can run one length beyond the ellipse
    cy, cx = int(rng.integers(reach, h - reach)), int(rng.integers(reach, w - reach))
    angle = float(rng.uniform(0, 180))
    canvas = np.zeros(hw, np.uint8)
    cv2.ellipse(canvas, (cx, cy), (half_long, half_short), angle, 0, 360, 1, -1)
    if rng.random() < 2 / 3:
        a = np.deg2rad(angle + rng.uniform(-40, 40))
        start = (int(cx + half_long * np.cos(a)), int(cy + half_long * np.sin(a)))
        end = (int(cx + reach * np.cos(a)), int(cy + reach * np.sin(a)))
        cv2.line(canvas, start, end, 1, max(2, half_short // 3))
    return canvas.astype(bool)


def with_stain(frame: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The frame with the stain's pixels shifted by 30 to 50 % of the range, up or down."""
    shift = rng.uniform(0.3, 0.5) * (1 if rng.random() < 0.5 else -1) * 255
    out = frame.astype(np.float32)
    out[mask] += shift
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def write_camera_set(out: str | Path, hw: tuple[int, int], n_train: int, n_defective: int, n_good: int,
                     lengths_px: tuple[float, float], seed: int = 0) -> dict:
    """train/good, test/stain (+ ground_truth/stain) and test/good of camera frames, each frame
    its own seed (train, then test: no test frame is a training frame)."""
    if min(hw) < 64 or n_train < 2 or n_defective < 1 or n_good < 0:
        raise InspectdError(f"camera set: need frames of at least 64 px, 2 training frames and 1 defect, got "
                            f"{hw}, {n_train}, {n_defective}")
    lo, hi = lengths_px
    if not 4 <= lo <= hi <= min(hw) / 4:
        raise InspectdError(f"camera set: stain lengths {lengths_px} must lie in [4, {min(hw) // 4}] px")
    out = Path(out)
    rng = np.random.default_rng([seed, 7])
    frames = iter(range(seed * 10_000, seed * 10_000 + n_train + n_defective + n_good))
    for i in range(n_train):
        save(out / "train" / "good" / f"{i:03d}.png", camera_frame(hw, next(frames)))
    lengths = []
    for i in range(n_defective):
        length = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # as many small as large
        mask = stain_mask(hw, length, rng)
        save(out / "test" / STAIN_TYPE / f"{i:03d}.png", with_stain(camera_frame(hw, next(frames)), mask, rng))
        save(out / "ground_truth" / STAIN_TYPE / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
        lengths.append(round(length, 1))
    for i in range(n_good):
        save(out / "test" / "good" / f"{i:03d}.png", camera_frame(hw, next(frames)))
    summary = {"size_hw": list(hw), "train": n_train, "defective": n_defective, "good": n_good,
               "stain_lengths_px": lengths, "seed": seed}
    (out / "camera_set.json").write_text(json.dumps(summary, indent=2))
    return summary


def save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image[..., ::-1] if image.ndim == 3 else image):
        raise InspectdError(f"{path}: could not write image")
