"""Cut-paste defects (F2PAD paper, eq. 16): X = (1 - M) * X_normal + M * S.

S is a random solid colour, or for structural defects the same region of another normal image
(shifted a little); M is a real defect mask (randomly resized, rotated, flipped and placed) or a
random blob. Where S is too close to the normal pixels it replaces, S is pushed away from them so
every pasted defect really differs from what was there (the paper rescales S by a factor).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from inspectd.data.images import IMAGE_SUFFIXES, list_images, read_image, read_mask, write_image
from inspectd.errors import ConfigError, InspectdError

DEFECT_TYPE = "cutpaste"
# Any RGB pixel is at least sqrt(3)/2 from the farthest corner of the colour cube, so up to this
# contrast can always be reached.
MAX_CONTRAST = 0.85


@dataclass
class SynthConfig:
    size: int = 256
    structural_prob: float = 0.0  # share of defects copied from another normal image
    min_contrast: float = 0.25  # least RGB distance between S and X_normal under the mask
    area_range: tuple[float, float] = (0.002, 0.08)  # mask area as a share of the image
    scale_range: tuple[float, float] = (0.5, 1.5)  # random resize of a real mask

    def __post_init__(self):
        lo, hi = self.area_range
        if not (isinstance(self.size, (int, np.integer)) and self.size >= 16):
            raise ConfigError(f"synth: size must be an integer >= 16, got {self.size!r}")
        if not 0.0 <= self.structural_prob <= 1.0:
            raise ConfigError(f"synth: structural_prob must be in [0, 1], got {self.structural_prob}")
        if not 0.0 <= self.min_contrast <= MAX_CONTRAST:
            raise ConfigError(f"synth: min_contrast must be in [0, {MAX_CONTRAST}], got {self.min_contrast}")
        if not 0.0 < lo < hi <= 0.5:
            raise ConfigError(f"synth: area_range must satisfy 0 < low < high <= 0.5, got {self.area_range}")
        if not 0.0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(f"synth: scale_range must satisfy 0 < low <= high, got {self.scale_range}")


class DefectSynthesizer:
    def __init__(self, mask_sources: list[np.ndarray] | None, config: SynthConfig | None = None, seed: int = 0):
        self.config = config or SynthConfig()
        self.sources = [np.asarray(m, bool) for m in (mask_sources or [])]
        if any(m.ndim != 2 for m in self.sources):
            raise InspectdError("synth: every mask source must be a 2-D (H, W) mask")
        self.sources = [m for m in self.sources if m.any()]  # an empty mask has no shape to reuse
        self.rng = np.random.default_rng(seed)

    # --- masks -----------------------------------------------------------------------------
    def make_mask(self) -> np.ndarray:
        """A (size, size) bool mask whose area share lies in config.area_range."""
        lo, hi = self.config.area_range
        for _ in range(20):  # rotation, cropping and resampling can move the area out of range
            mask = self._transformed_source() if self.sources else self._blob()
            if lo <= mask.mean() <= hi:
                return mask
        return self._fit_area(mask)

    def _transformed_source(self) -> np.ndarray:
        """A real mask: cropped to its shape, resized, flipped, rotated and placed at random."""
        src = self.sources[self.rng.integers(len(self.sources))]
        ys, xs = np.nonzero(src)
        shape = src[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255
        scale = self._scale_for(src)
        # sources may come from images of another size: map each axis to the output size
        h = max(2, round(shape.shape[0] * scale * self.config.size / src.shape[0]))
        w = max(2, round(shape.shape[1] * scale * self.config.size / src.shape[1]))
        shape = cv2.resize(shape, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.rng.random() < 0.5:
            shape = shape[:, ::-1]
        return self._place(self._rotate(shape, self.rng.uniform(0, 360)))

    def _scale_for(self, src: np.ndarray) -> float:
        """A random scale from the part of scale_range that puts the resized area in area_range.

        A source too big or too small for the whole scale_range gets any scale that fits, so
        large real defects stay in use (smaller) instead of being rejected again and again.
        """
        lo, hi = self.config.area_range
        share = float(src.mean())  # the area share after scaling is share * scale**2
        # aim a little inside the range: rotation and re-binarising change the area slightly
        fit_lo, fit_hi = np.sqrt(lo * 1.1 / share), np.sqrt(hi * 0.9 / share)
        low, high = max(self.config.scale_range[0], fit_lo), min(self.config.scale_range[1], fit_hi)
        if low > high:
            low, high = fit_lo, fit_hi
        return float(self.rng.uniform(low, high))

    def _rotate(self, shape: np.ndarray, angle: float) -> np.ndarray:
        """Rotate a uint8 shape on a canvas big enough for any angle; re-binarise and crop."""
        h, w = shape.shape
        side = int(np.ceil(np.hypot(h, w))) + 2
        canvas = np.zeros((side, side), np.uint8)
        y, x = (side - h) // 2, (side - w) // 2
        canvas[y : y + h, x : x + w] = shape
        rotation = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
        out = cv2.warpAffine(canvas, rotation, (side, side), flags=cv2.INTER_LINEAR) > 127
        ys, xs = np.nonzero(out)
        return out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] if ys.size else out

    def _place(self, shape: np.ndarray) -> np.ndarray:
        """Put a bool shape at a random position, wholly inside the image."""
        size = self.config.size
        shape = shape[:size, :size]
        h, w = shape.shape
        y = self.rng.integers(0, size - h + 1)
        x = self.rng.integers(0, size - w + 1)
        mask = np.zeros((size, size), bool)
        mask[y : y + h, x : x + w] = shape
        return mask

    def _blob(self) -> np.ndarray:
        """One irregular compact blob: smoothed noise plus a round bump, thresholded."""
        size = self.config.size
        lo, hi = self.config.area_range
        # 45% of the square window survives the threshold below: size the window for the drawn area
        side = int(np.sqrt(self.rng.uniform(lo, hi) / 0.45) * size)
        side = max(6, min(side, size - 2))
        noise = cv2.GaussianBlur(self.rng.random((side, side)).astype(np.float32), (0, 0), side / 6)
        noise = (noise - noise.mean()) / max(float(noise.std()), 1e-6)
        yy, xx = np.mgrid[:side, :side]
        bump = 1 - ((yy - side / 2) ** 2 + (xx - side / 2) ** 2) / (side / 2) ** 2
        field = noise + 1.5 * bump  # the noise makes the outline irregular, the bump keeps it whole
        shape = field > np.quantile(field, 0.55)
        return self._place(largest_component(shape))

    def _fit_area(self, mask: np.ndarray) -> np.ndarray:
        """Dilate or erode a mask until its area lies in range (a rare last resort)."""
        lo, hi = self.config.area_range
        kernel = np.ones((3, 3), np.uint8)
        for _ in range(50):
            if mask.mean() < lo:
                mask = cv2.dilate(mask.astype(np.uint8), kernel) > 0
            elif mask.mean() > hi:
                eroded = cv2.erode(mask.astype(np.uint8), kernel) > 0
                if not eroded.any():
                    break
                mask = eroded
            else:
                break
        return mask

    # --- pasting ---------------------------------------------------------------------------
    def __call__(self, normal: np.ndarray, others: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Paste one defect into `normal`; `others` are normal images for structural defects."""
        self._check_image(normal, "normal image")
        for i, other in enumerate(others or []):
            self._check_image(other, f"others[{i}]")
        normal = normal.astype(np.float32)
        mask = self.make_mask()
        structural = bool(others) and self.rng.random() < self.config.structural_prob
        if structural:
            source = self._scale_apart(self._structural_source(mask, others), normal, mask)
        else:
            source = self._colour_source(normal, mask)
        source = self._push_apart(source, normal, mask)
        out = normal.copy()
        out[mask] = source[mask]  # eq. (16): outside the mask the normal pixels stay exactly
        return out, mask

    def _check_image(self, image: np.ndarray, name: str) -> None:
        size = self.config.size
        if not isinstance(image, np.ndarray) or image.shape != (size, size, 3):
            shape = getattr(image, "shape", type(image).__name__)
            raise InspectdError(f"synth: {name} has shape {shape}, expected ({size}, {size}, 3)")

    def _colour_source(self, normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """A solid random colour, redrawn a few times while it is too close to the pixels it covers."""
        under = normal[mask]
        best, best_margin = None, -1.0
        for _ in range(30):
            colour = self.rng.random(3).astype(np.float32)
            # judge by a low quantile: the colour should stand out from nearly every pixel
            margin = float(np.quantile(np.linalg.norm(under - colour, axis=1), 0.05))
            if margin > best_margin:
                best, best_margin = colour, margin
            if margin >= self.config.min_contrast:
                break
        return np.broadcast_to(best, normal.shape).copy()

    def _structural_source(self, mask: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
        """Another normal image, shifted so the mask reads a nearby region of it (never wrapped)."""
        other = others[self.rng.integers(len(others))].astype(np.float32)
        size, reach = self.config.size, self.config.size // 4
        ys, xs = np.nonzero(mask)
        dy = self.rng.integers(max(-reach, -ys.min()), min(reach, size - 1 - ys.max()) + 1)
        dx = self.rng.integers(max(-reach, -xs.min()), min(reach, size - 1 - xs.max()) + 1)
        return np.roll(other, (-int(dy), -int(dx)), axis=(0, 1))  # source[y, x] = other[y+dy, x+dx]

    def _scale_apart(self, source: np.ndarray, normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Multiply S by one factor (the paper's rule) until 90% of its pixels differ enough.

        One factor keeps the copied texture; brighten over a dark region, darken over a light one.
        """
        under, pasted = normal[mask], source[mask]
        factors = np.linspace(1.0, 4.0, 13) if under.mean() < 0.5 else np.linspace(1.0, 0.0, 11)
        for factor in factors:
            scaled = np.clip(pasted * factor, 0, 1)
            if np.quantile(np.linalg.norm(scaled - under, axis=1), 0.1) >= self.config.min_contrast:
                break
        out = source.copy()
        out[mask] = scaled
        return out

    def _push_apart(self, source: np.ndarray, normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Make every pixel of S under the mask differ from X_normal by at least min_contrast."""
        need = self.config.min_contrast
        under, pasted = normal[mask], source[mask].copy()
        away_from_mean = away_direction(under.mean(axis=0))
        for _ in range(8):
            diff = pasted - under
            dist = np.linalg.norm(diff, axis=1)
            if (dist >= need).all():
                break
            # the paper multiplies S by a factor: lengthen the difference; a pixel equal to the
            # normal one has no direction of its own and moves away from the local mean colour
            direction = np.where(dist[:, None] > 1e-3, diff / np.maximum(dist[:, None], 1e-6), away_from_mean)
            pasted = np.clip(under + direction * np.maximum(dist, need * 1.2)[:, None], 0, 1)
        # clipping at the colour cube's faces can still leave a few too close: the far corner is
        # always at least MAX_CONTRAST away
        too_close = np.linalg.norm(pasted - under, axis=1) < need
        pasted[too_close] = (under[too_close] < 0.5).astype(np.float32)
        out = source.copy()
        out[mask] = pasted
        return out


def away_direction(colour: np.ndarray) -> np.ndarray:
    """Unit RGB direction from `colour` towards the farthest corner of the colour cube."""
    direction = np.where(colour < 0.5, 1.0, -1.0).astype(np.float32)
    return direction / np.linalg.norm(direction)


def largest_component(shape: np.ndarray) -> np.ndarray:
    """The largest 8-connected piece of a bool mask: one defect per paste."""
    n, labels = cv2.connectedComponents(shape.astype(np.uint8))
    if n <= 2:
        return shape
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def load_mask_sources(folder: str | Path, size: int) -> list[np.ndarray]:
    """Every non-empty mask image under `folder` (recursively), resized to (size, size)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InspectdError(f"{folder}: mask folder not found")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    masks = [m for m in (read_mask(p, size) for p in paths) if m.any()]
    if not masks:
        raise InspectdError(f"{folder}: no non-empty mask images (searched {len(paths)} image files)")
    return masks


def normal_folder(path: Path) -> Path:
    """A flat folder of normal images, or an MVTec root whose train/good is used."""
    if not path.is_dir():
        raise InspectdError(f"{path}: folder of normal images not found")
    mvtec = path / "train" / "good"
    return mvtec if mvtec.is_dir() else path


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InspectdError(f"{out_dir}: output path exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InspectdError(f"{out_dir}: output folder exists and is not empty (pass overwrite=True / --overwrite)")


def write_synthetic_set(normal_dir: str | Path, masks_dir: str | Path | None, out_dir: str | Path, n: int,
                        seed: int, size: int = 256, n_good: int | None = None, config: SynthConfig | None = None,
                        overwrite: bool = False) -> dict:
    """Write an MVTec-layout test set and return a summary.

    out_dir/test/cutpaste/000.png, out_dir/ground_truth/cutpaste/000_mask.png (exact masks) and
    out_dir/test/good/ (n_good normal images, default n // 3 as in MVTec's good:defective ratio).
    Everything is written to a temporary sibling folder first and renamed at the end.
    """
    out_dir = Path(out_dir)
    n_good = max(1, n // 3) if n_good is None else n_good
    if n < 1 or n_good < 0:
        raise InspectdError(f"synth: need n >= 1 and n_good >= 0, got n={n}, n_good={n_good}")
    check_out_dir(out_dir, overwrite)
    source_dir = normal_folder(Path(normal_dir))
    paths = list_images(source_dir)
    if not paths:
        raise InspectdError(f"{source_dir}: no normal images")
    normals = np.stack([read_image(p, size) for p in paths])  # names a corrupt file itself
    config = replace(config or SynthConfig(), size=size)  # a copy: the caller's config is left alone
    sources = load_mask_sources(masks_dir, size) if masks_dir else None
    synth = DefectSynthesizer(sources, config, seed)
    rng = np.random.default_rng([seed, 1])  # picks the bases; separate from the synthesiser's stream

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for i in range(n):
            base = int(rng.integers(len(normals)))
            others = [normals[j] for j in range(len(normals)) if j != base]
            image, mask = synth(normals[base], others)
            write_image(tmp / "test" / DEFECT_TYPE / f"{i:03d}.png", image)
            write_image(tmp / "ground_truth" / DEFECT_TYPE / f"{i:03d}_mask.png", mask)
        # distinct good images while there are enough of them
        good = rng.choice(len(normals), size=n_good, replace=n_good > len(normals))
        for i, index in enumerate(good):
            write_image(tmp / "test" / "good" / f"{i:03d}.png", normals[index])
        summary = {"out": str(out_dir), "defective": n, "good": n_good, "seed": seed, "size": size,
                   "normal_dir": str(source_dir), "normal_images": len(normals),
                   "mask_sources": len(sources) if sources else "random blobs",
                   "images_dir": str(out_dir / "test" / DEFECT_TYPE),
                   "masks_dir": str(out_dir / "ground_truth" / DEFECT_TYPE),
                   "good_dir": str(out_dir / "test" / "good"), "config": asdict(config)}
        (tmp / "synth.json").write_text(json.dumps(summary, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)  # empty, or overwrite was asked for
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
