"""Cut-paste defects (F2PAD paper, eq. 16): X = (1 - M) * X_normal + M * S.

S is a random colour, or for structural defects the same region of another normal image;
M is a real defect mask (randomly resized, rotated, flipped and placed) or a random blob.
Where S is too close to the normal pixels it replaces, S is pushed away from them so every
pasted defect really differs from what was there (the paper rescales S by a factor).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from inspectd.data.images import IMAGE_SUFFIXES, list_images, read_image, read_mask, write_image
from inspectd.errors import InspectdError

DEFECT_TYPE = "cutpaste"


@dataclass
class SynthConfig:
    size: int = 256
    structural_prob: float = 0.0  # share of defects copied from another normal image
    min_contrast: float = 0.25  # least RGB distance between S and X_normal under the mask
    area_range: tuple[float, float] = (0.002, 0.08)  # mask area as a share of the image
    scale_range: tuple[float, float] = (0.5, 1.5)  # random resize of a real mask


class DefectSynthesizer:
    def __init__(self, mask_sources: list[np.ndarray] | None, config: SynthConfig | None = None, seed: int = 0):
        self.sources = [m for m in (mask_sources or []) if m.any()]
        self.config = config or SynthConfig()
        self.rng = np.random.default_rng(seed)

    # --- masks -----------------------------------------------------------------------------
    def make_mask(self) -> np.ndarray:
        """A mask whose area lies in config.area_range (tries a few draws, then rescales)."""
        lo, hi = self.config.area_range
        n = self.config.size**2
        for _ in range(20):
            mask = self._transformed_source() if self.sources else self._blob()
            if lo * n <= mask.sum() <= hi * n:
                return mask
        return self._fit_area(mask, lo, hi)

    def _transformed_source(self) -> np.ndarray:
        size = self.config.size
        src = self.sources[self.rng.integers(len(self.sources))]
        ys, xs = np.nonzero(src)
        shape = src[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8)
        scale = self.rng.uniform(*self.config.scale_range) * size / src.shape[0]
        h = max(2, min(size - 2, int(round(shape.shape[0] * scale))))
        w = max(2, min(size - 2, int(round(shape.shape[1] * scale))))
        shape = cv2.resize(shape * 255, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.rng.random() < 0.5:
            shape = shape[:, ::-1]
        return self._place(self._rotate(shape, self.rng.uniform(0, 360)))

    def _rotate(self, shape: np.ndarray, angle: float) -> np.ndarray:
        h, w = shape.shape
        side = int(np.ceil(np.hypot(h, w))) + 2  # room for any rotation
        canvas = np.zeros((side, side), np.uint8)
        y, x = (side - h) // 2, (side - w) // 2
        canvas[y : y + h, x : x + w] = shape
        rot = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
        out = cv2.warpAffine(canvas, rot, (side, side), flags=cv2.INTER_LINEAR) > 127
        ys, xs = np.nonzero(out)
        return out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] if ys.size else out

    def _place(self, shape: np.ndarray) -> np.ndarray:
        size = self.config.size
        shape = shape[:size, :size]
        h, w = shape.shape
        y = self.rng.integers(0, size - h + 1)
        x = self.rng.integers(0, size - w + 1)
        mask = np.zeros((size, size), bool)
        mask[y : y + h, x : x + w] = shape
        return mask

    def _blob(self) -> np.ndarray:
        """Smoothed random noise inside a random ellipse-sized window, thresholded."""
        size = self.config.size
        lo, hi = self.config.area_range
        side = int(np.sqrt(self.rng.uniform(lo, hi) * size * size) * 1.6)
        side = max(6, min(side, size - 2))
        noise = cv2.GaussianBlur(self.rng.random((side, side)).astype(np.float32), (0, 0), side / 6)
        yy, xx = np.mgrid[:side, :side]
        ellipse = ((yy - side / 2) / (side / 2)) ** 2 + ((xx - side / 2) / (side / 2)) ** 2
        noise = (noise - noise.mean()) / max(float(noise.std()), 1e-6)
        field = noise + 1.5 * (1 - ellipse)  # irregular outline, still one compact piece
        shape = field > np.quantile(field, 0.55)
        n, labels = cv2.connectedComponents(shape.astype(np.uint8))
        if n > 2:  # keep the largest piece: one defect per paste
            largest = 1 + np.argmax([(labels == i).sum() for i in range(1, n)])
            shape = labels == largest
        return self._place(shape)

    def _fit_area(self, mask: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """Erode or dilate a mask until its area lies in range (rarely needed)."""
        n = self.config.size**2
        kernel = np.ones((3, 3), np.uint8)
        for _ in range(50):
            area = mask.sum()
            if area < lo * n:
                mask = cv2.dilate(mask.astype(np.uint8), kernel) > 0
            elif area > hi * n:
                eroded = cv2.erode(mask.astype(np.uint8), kernel) > 0
                if not eroded.any():
                    break
                mask = eroded
            else:
                break
        return mask

    # --- pasting ---------------------------------------------------------------------------
    def __call__(self, normal: np.ndarray, others: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if normal.shape[:2] != (self.config.size, self.config.size):
            raise InspectdError(f"synth: normal image is {normal.shape[1]}x{normal.shape[0]}, "
                                f"expected {self.config.size}x{self.config.size}")
        mask = self.make_mask()
        structural = bool(others) and self.rng.random() < self.config.structural_prob
        source = self._structural_source(mask, others) if structural else self._colour_source(normal, mask)
        source = self._push_apart(source, normal, mask)
        out = normal.copy()
        out[mask] = source[mask]
        return out.astype(np.float32), mask

    def _colour_source(self, normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """A solid random colour; redrawn while it is too close to the pixels it covers."""
        under = normal[mask]
        best, best_margin = None, -1.0
        for _ in range(30):
            colour = self.rng.random(3).astype(np.float32)
            margin = float(np.quantile(np.linalg.norm(under - colour, axis=1), 0.05))
            if margin > best_margin:
                best, best_margin = colour, margin
            if margin >= self.config.min_contrast:
                break
        return np.broadcast_to(best, normal.shape).copy()

    def _structural_source(self, mask: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
        other = others[self.rng.integers(len(others))]
        shift = self.rng.integers(-self.config.size // 4, self.config.size // 4 + 1, size=2)
        return np.roll(other, tuple(int(s) for s in shift), axis=(0, 1)).astype(np.float32)

    def _push_apart(self, source: np.ndarray, normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Move S away from X_normal under the mask until each pixel differs by min_contrast."""
        need = self.config.min_contrast
        src = source.copy()
        for _ in range(8):
            diff = src[mask] - normal[mask]
            dist = np.linalg.norm(diff, axis=1)
            if (dist >= need).all():
                return src
            # scale the difference up (the paper multiplies S by a factor); a pixel that equals the
            # normal one gets the direction away from the local mean colour
            direction = np.where(dist[:, None] > 1e-3, diff / np.maximum(dist[:, None], 1e-6),
                                 self._away_from(normal[mask].mean(0)))
            pushed = normal[mask] + direction * np.maximum(dist, need * 1.2)[:, None]
            src[mask] = np.clip(pushed, 0, 1)
        # clipping at the colour cube's faces can still leave pixels too close: use the far corner
        diff = np.linalg.norm(src[mask] - normal[mask], axis=1)
        if (diff < need).any():
            far = (normal[mask] < 0.5).astype(np.float32)
            fixed = src[mask]
            fixed[diff < need] = far[diff < need]
            src[mask] = fixed
        return src

    def _away_from(self, colour: np.ndarray) -> np.ndarray:
        direction = np.where(colour < 0.5, 1.0, -1.0).astype(np.float32)
        return direction / np.linalg.norm(direction)


def load_mask_sources(folder: str | Path, size: int) -> list[np.ndarray]:
    """Every non-empty mask image under `folder` (recursively), resized to (size, size)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InspectdError(f"{folder}: mask folder not found")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    masks = [m for m in (read_mask(p, size) for p in paths) if m.any()]
    if not masks:
        raise InspectdError(f"{folder}: no non-empty mask images")
    return masks


def normal_folder(path: Path) -> Path:
    """A flat folder of normal images, or an MVTec root whose train/good is used."""
    if not path.is_dir():
        raise InspectdError(f"{path}: folder of normal images not found")
    mvtec = path / "train" / "good"
    return mvtec if mvtec.is_dir() else path


def write_synthetic_set(normal_dir: str | Path, masks_dir: str | Path | None, out_dir: str | Path, n: int,
                        seed: int, size: int = 256, n_good: int | None = None, config: SynthConfig | None = None,
                        overwrite: bool = False) -> dict:
    """Write an MVTec-layout test set: test/cutpaste + ground_truth/cutpaste (exact masks) and test/good."""
    out_dir = Path(out_dir)
    if n < 1:
        raise InspectdError(f"synth: -n must be at least 1, got {n}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise InspectdError(f"{out_dir}: exists and is not empty (use --overwrite)")
    paths = list_images(normal_folder(Path(normal_dir)))
    if not paths:
        raise InspectdError(f"{normal_dir}: no normal images")
    normals = np.stack([read_image(p, size) for p in paths])
    config = config or SynthConfig(size=size)
    config.size = size
    sources = load_mask_sources(masks_dir, size) if masks_dir else None
    synth = DefectSynthesizer(sources, config, seed)
    rng = np.random.default_rng(seed + 1)
    n_good = max(1, n // 3) if n_good is None else n_good
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for i in range(n):
            base = int(rng.integers(len(normals)))
            others = [normals[j] for j in range(len(normals)) if j != base]
            image, mask = synth(normals[base], others)
            write_image(tmp / "test" / DEFECT_TYPE / f"{i:03d}.png", image)
            write_image(tmp / "ground_truth" / DEFECT_TYPE / f"{i:03d}_mask.png", mask)
        for i in range(n_good):
            write_image(tmp / "test" / "good" / f"{i:03d}.png", normals[int(rng.integers(len(normals)))])
        summary = {"out": str(out_dir), "defective": n, "good": n_good, "seed": seed, "size": size,
                   "normal_images": len(normals), "mask_sources": len(sources) if sources else "random blobs",
                   "config": asdict(config)}
        (tmp / "synth.json").write_text(json.dumps(summary, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
