"""Defect geometry: a binary mask and a score map -> one record per connected defect; boxes and
the exact maps between native, downscaled (screening) and crop coordinates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.measure import label, regionprops


def measure_defects(mask: np.ndarray, scores: np.ndarray | None = None, px_per_mm: float | None = None,
                    min_area_px: int = 1) -> list[dict]:
    """Connected components of `mask` (8-connectivity), largest first.

    orientation_deg is the angle of the major axis from the image x axis, counter-clockwise as
    seen on screen (y grows downwards), in (-90, 90]; bbox is [x, y, width, height] and centroid
    [x, y] in pixels.
    """
    labels = label(np.asarray(mask, bool), connectivity=2)
    defects = []
    for region in regionprops(labels, intensity_image=scores):
        if region.area < min_area_px:
            continue
        y0, x0, y1, x1 = region.bbox
        cy, cx = region.centroid
        record = {
            "area_px": int(region.area),
            "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
            "centroid": [round(float(cx), 2), round(float(cy), 2)],
            # skimage: angle between the row axis and the major axis; converted to the x axis
            "orientation_deg": round(_to_x_axis_degrees(region.orientation), 2),
            "major_axis_px": round(float(region.axis_major_length), 2),
            "minor_axis_px": round(float(region.axis_minor_length), 2),
        }
        if px_per_mm:
            record["area_mm2"] = round(region.area / px_per_mm**2, 4)
            record["major_axis_mm"] = round(record["major_axis_px"] / px_per_mm, 3)
            record["minor_axis_mm"] = round(record["minor_axis_px"] / px_per_mm, 3)
        if scores is not None:
            record["mean_score"] = round(float(region.intensity_mean), 4)
            record["max_score"] = round(float(region.intensity_max), 4)
        defects.append(record)
    return sorted(defects, key=lambda d: -d["area_px"])


def _to_x_axis_degrees(orientation_rad: float) -> float:
    # skimage measures the major axis from the row axis; +90 degrees puts it on the x axis,
    # counter-clockwise as seen on screen.
    angle = math.degrees(orientation_rad) + 90.0
    angle = (angle + 90.0) % 180.0 - 90.0  # into [-90, 90)
    return 90.0 if angle == -90.0 else angle


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two masks of one image; two empty masks agree perfectly (1.0)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = np.count_nonzero(pred | truth)
    return 1.0 if union == 0 else np.count_nonzero(pred & truth) / union


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """DICE (pixel F1) of two masks of one image; two empty masks agree perfectly (1.0)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    return 1.0 if total == 0 else 2 * np.count_nonzero(pred & truth) / total


# --- boxes and the native <-> screening <-> crop coordinate maps --------------------------------
@dataclass(frozen=True)
class Box:
    """An axis-aligned box of whole pixels: columns x .. x+w-1, rows y .. y+h-1."""

    x: int
    y: int
    w: int
    h: int

    @property
    def x1(self) -> int:
        return self.x + self.w

    @property
    def y1(self) -> int:
        return self.y + self.h

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y, self.y1), slice(self.x, self.x1)

    @property
    def area(self) -> int:
        return self.w * self.h

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    def clip(self, height: int, width: int) -> "Box":
        x0, y0 = min(max(self.x, 0), width), min(max(self.y, 0), height)
        x1, y1 = min(max(self.x1, x0), width), min(max(self.y1, y0), height)
        return Box(x0, y0, x1 - x0, y1 - y0)

    def pad(self, margin: int) -> "Box":
        return Box(self.x - margin, self.y - margin, self.w + 2 * margin, self.h + 2 * margin)

    def relative_to(self, origin: "Box") -> "Box":
        """This box in the coordinates of a crop that starts at origin's corner."""
        return Box(self.x - origin.x, self.y - origin.y, self.w, self.h)

    def offset(self, origin: "Box") -> "Box":
        """A box given in origin's crop coordinates, back in the frame's coordinates."""
        return Box(self.x + origin.x, self.y + origin.y, self.w, self.h)

    @staticmethod
    def union(boxes: list["Box"]) -> "Box":
        x0, y0 = min(b.x for b in boxes), min(b.y for b in boxes)
        x1, y1 = max(b.x1 for b in boxes), max(b.y1 for b in boxes)
        return Box(x0, y0, x1 - x0, y1 - y0)

    def intersection(self, other: "Box") -> "Box":
        """The pixels both boxes hold (an empty box, w or h 0, when they do not overlap)."""
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.x1, other.x1), min(self.y1, other.y1)
        return Box(x0, y0, max(0, x1 - x0), max(0, y1 - y0))

    def overlaps(self, other: "Box") -> bool:
        return self.x < other.x1 and other.x < self.x1 and self.y < other.y1 and other.y < self.y1


def native_to_small(j: int, native: int, small: int) -> int:
    """The small-image pixel (one axis) whose area holds native pixel j's centre: resizing maps
    centres, (j + 0.5) * small / native, and integer arithmetic keeps it exact at any size."""
    return ((2 * j + 1) * small) // (2 * native)


def small_to_native_start(i: int, native: int, small: int) -> int:
    """The first native pixel (one axis) whose centre falls in small pixel i (or past it)."""
    return -((small - 2 * i * native) // (2 * small))  # ceil((2 i N - s) / 2s)


def box_to_native(box: Box, native_hw: tuple[int, int], small_hw: tuple[int, int]) -> Box:
    """A box on the downscaled (screening) image -> every native pixel whose centre lies in it."""
    (nh, nw), (sh, sw) = native_hw, small_hw
    x0, x1 = small_to_native_start(box.x, nw, sw), small_to_native_start(box.x1, nw, sw)
    y0, y1 = small_to_native_start(box.y, nh, sh), small_to_native_start(box.y1, nh, sh)
    return Box(x0, y0, x1 - x0, y1 - y0).clip(nh, nw)


def box_to_small(box: Box, native_hw: tuple[int, int], small_hw: tuple[int, int]) -> Box:
    """A native box -> the downscaled pixels that hold the centres of its pixels."""
    (nh, nw), (sh, sw) = native_hw, small_hw
    x0, x1 = native_to_small(box.x, nw, sw), native_to_small(box.x1 - 1, nw, sw) + 1
    y0, y1 = native_to_small(box.y, nh, sh), native_to_small(box.y1 - 1, nh, sh) + 1
    return Box(x0, y0, x1 - x0, y1 - y0)


def mask_box(mask: np.ndarray) -> Box | None:
    """The tight box around a mask's True pixels (None when empty)."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.argmax(rows), len(rows) - np.argmax(rows[::-1])
    x0, x1 = np.argmax(cols), len(cols) - np.argmax(cols[::-1])
    return Box(int(x0), int(y0), int(x1 - x0), int(y1 - y0))


@dataclass
class CroppedMask:
    """A mask of a (height, width) frame kept as crops: (box, bool array of the box's size), so a
    20-megapixel frame with one small defect never needs a frame-sized array."""

    height: int
    width: int
    crops: list[tuple[Box, np.ndarray]]

    @classmethod
    def from_full(cls, mask: np.ndarray, boxes: list[Box]) -> "CroppedMask":
        mask = np.asarray(mask, bool)
        return cls(mask.shape[0], mask.shape[1], [(b, mask[b.slices]) for b in boxes])

    @classmethod
    def around(cls, mask: np.ndarray) -> "CroppedMask":
        """One crop around all of a full-frame mask's pixels (none when it is empty)."""
        box = mask_box(mask)
        return cls.from_full(mask, [box] if box else [])

    def full(self) -> np.ndarray:
        """The whole-frame mask (allocates height x width bytes: fine for a viewer, not for 20 MP loops)."""
        mask = np.zeros((self.height, self.width), bool)
        for box, crop in self.crops:
            mask[box.slices] |= crop
        return mask

    @property
    def area_px(self) -> int:
        return int(np.count_nonzero(self.full())) if len(self.crops) > 1 else \
            sum(int(np.count_nonzero(c)) for _, c in self.crops)


@dataclass
class FrameCrops:
    """The pixels of a (height, width) frame that a tile refiner reads, as crops (box, pixels of
    the box's size): what a flagged frame's message carries instead of the whole frame (frame
    schema 4). Indexed like the frame it stands for; pixels outside every crop read as 0, and
    `covers` says whether a box is all known pixels."""

    height: int
    width: int
    crops: list[tuple[Box, np.ndarray]]

    @classmethod
    def cut(cls, frame: np.ndarray, boxes: list[Box]) -> "FrameCrops":
        return cls(frame.shape[0], frame.shape[1], [(b, np.ascontiguousarray(frame[b.slices])) for b in boxes])

    @property
    def shape(self) -> tuple[int, ...]:
        channels = self.crops[0][1].shape[2:] if self.crops else (3,)
        return (self.height, self.width, *channels)

    @property
    def dtype(self):
        return self.crops[0][1].dtype if self.crops else np.dtype(np.float32)

    @property
    def pixels(self) -> int:
        return sum(box.area for box, _ in self.crops)

    def covers(self, box: Box) -> bool:
        """Whether every pixel of `box` lies in one crop (a refiner's window must)."""
        return any(c.x <= box.x and c.y <= box.y and box.x1 <= c.x1 and box.y1 <= c.y1 for c, _ in self.crops)

    def __getitem__(self, slices: tuple[slice, slice]) -> np.ndarray:
        rows, cols = slices
        want = Box(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start).clip(self.height, self.width)
        out = np.zeros((want.h, want.w, *self.shape[2:]), self.dtype)
        for box, pixels in self.crops:
            if box.overlaps(want):
                part = box.intersection(want)
                out[part.relative_to(want).slices] = pixels[part.relative_to(box).slices]
        return out
