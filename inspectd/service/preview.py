"""The optional picture a result carries for people (schema 3): one size-capped JPEG of the frame,
or of the area around its defects, so that `inspectd view` can draw the outlines on the part.

Off by default (`refiner.preview.kind: off`): a line that only feeds a PLC does not pay for it.
"frame" shows the whole frame downscaled; "defects" shows the box around all defects with a
margin, at up to `max_side` pixels, which keeps a small scratch on a 20-megapixel frame visible.
The JPEG quality, then the size, step down until the picture fits `max_bytes`; a picture that
still does not fit is left out (logged by the caller), never sent oversized.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import cv2
import numpy as np
from PIL import Image

from inspectd.geometry import Box

QUALITIES = (85, 70, 55, 40)  # tried in turn before the picture is made smaller
MIN_SIDE = 32  # a picture is never made smaller than this; past it, it is left out
MARGIN = 0.5  # "defects": context around the defects' box, as a share of its size
MIN_CONTEXT_PX = 32  # ... and at least this many pixels on each side


@dataclass(frozen=True)
class Preview:
    """A JPEG of `box` (native frame pixels) scaled to width x height."""

    jpeg: bytes
    box: Box
    width: int
    height: int

    def meta(self) -> dict:
        """What the result JSON says about it (`preview` field)."""
        return {"encoding": "jpeg", "box": self.box.as_list(), "width": self.width, "height": self.height}


def preview_box(height: int, width: int, kind: str, defect_boxes: list[Box]) -> Box | None:
    """The part of the frame the picture shows; None when there is nothing to show."""
    if kind == "frame":
        return Box(0, 0, width, height)
    if kind != "defects" or not defect_boxes:
        return None
    box = Box.union(defect_boxes)
    pad_x = max(MIN_CONTEXT_PX, round(box.w * MARGIN))
    pad_y = max(MIN_CONTEXT_PX, round(box.h * MARGIN))
    return Box(box.x - pad_x, box.y - pad_y, box.w + 2 * pad_x, box.h + 2 * pad_y).clip(height, width)


def make_preview(image: np.ndarray, kind: str, defect_boxes: list[Box], max_side: int,
                 max_bytes: int) -> Preview | None:
    """The picture of a refined frame (float RGB in [0, 1] or uint8), or None (off, nothing to show,
    or it cannot fit in max_bytes)."""
    box = preview_box(image.shape[0], image.shape[1], kind, defect_boxes)
    if box is None:
        return None
    crop = image[box.slices]  # a view: only the shown area is converted below
    side = max_side
    while side >= MIN_SIDE:
        scale = min(1.0, side / max(box.w, box.h))
        size = (max(1, round(box.w * scale)), max(1, round(box.h * scale)))
        small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else crop
        rgb = to_uint8(small)
        for quality in QUALITIES:
            jpeg = encode_jpeg(rgb, quality)
            if len(jpeg) <= max_bytes:
                return Preview(jpeg, box, size[0], size[1])
        side //= 2
    return None


def to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("the preview JPEG could not be encoded")
    return data.tobytes()


def jpeg_size(data: bytes) -> tuple[str | None, int, int]:
    """(format, width, height) read from the image's header only (Pillow opens lazily: no decode),
    so a receiver checks a picture before anyone decodes it."""
    with Image.open(BytesIO(data)) as image:
        return image.format, image.width, image.height
