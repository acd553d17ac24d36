"""What subscribers (the MQTT bridge, the live view) take from a result's mask, in one place.

`parse_result` gives the mask as crops of the frame (schema 2: one per defect, with offsets;
schema 1: one full-frame crop). These functions work on the crops, so a 20-megapixel frame with
one small defect never makes a subscriber allocate a frame-sized array.
"""

from __future__ import annotations

import cv2
import numpy as np

from inspectd.data.images import encode_png
from inspectd.geometry import Box, CroppedMask


def as_cropped(mask: CroppedMask | np.ndarray) -> CroppedMask:
    """parse_result's crops as they are; a full-frame array (a test, an old caller) cropped."""
    return mask if isinstance(mask, CroppedMask) else CroppedMask.around(np.asarray(mask, bool))


def union_box(mask: CroppedMask) -> Box | None:
    return Box.union([b for b, _ in mask.crops]) if mask.crops else None


def mask_png(result: dict, mask: CroppedMask | np.ndarray) -> bytes:
    """The defect mask as an 8-bit grey PNG (255 = defect) of the box around all defects (an
    empty 1x1 PNG when there is none); mask_offset() says where it sits in the frame."""
    mask = as_cropped(mask)
    box = union_box(mask)
    if box is None:
        return encode_png(np.zeros((1, 1), bool))
    canvas = np.zeros((box.h, box.w), bool)
    for b, crop in mask.crops:
        canvas[b.relative_to(box).slices] |= crop
    return encode_png(canvas)


def mask_offset(result: dict, mask: CroppedMask | np.ndarray) -> list[int]:
    """[x, y] of mask_png's top-left pixel in the frame."""
    box = union_box(as_cropped(mask))
    return [box.x, box.y] if box else [0, 0]


def mask_outlines(result: dict, mask: CroppedMask | np.ndarray, max_points: int = 200) -> list[list[list[int]]]:
    """Outer outline of each defect region as a polygon [[x, y], ...] in frame pixels (OpenCV
    contours per crop, simplified to at most about `max_points` points each so a page stays light)."""
    outlines = []
    for box, crop in as_cropped(mask).crops:
        contours, _ = cv2.findContours(np.asarray(crop, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            if len(contour) > max_points:
                contour = cv2.approxPolyDP(contour, cv2.arcLength(contour, True) / max_points, True)
            outlines.append((contour.reshape(-1, 2) + (box.x, box.y)).astype(int).tolist())
    return outlines


def frame_size(result: dict, mask: CroppedMask | np.ndarray) -> tuple[int, int]:
    """(width, height) of the frame the result is about."""
    mask = as_cropped(mask)
    return int(mask.width), int(mask.height)
