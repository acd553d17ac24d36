"""What subscribers (the MQTT bridge, the live view) take from a result's mask, in one place.

Everything that reads the mask part of a result message lives here, so a change of how masks
travel (schema v2: per-defect crops with offsets instead of one full-frame PNG) changes these
functions only. Pure functions of what `parse_result` returns.
"""

from __future__ import annotations

import cv2
import numpy as np

from inspectd.data.images import encode_png


def mask_png(result: dict, mask: np.ndarray) -> bytes:
    """The defect mask as an 8-bit grey PNG (255 = defect) of the frame's size."""
    return encode_png(np.asarray(mask, bool))


def mask_outlines(result: dict, mask: np.ndarray, max_points: int = 200) -> list[list[list[int]]]:
    """Outer outline of each defect region as a polygon [[x, y], ...] in frame pixels (OpenCV
    contours, simplified to at most about `max_points` points each so a page stays light)."""
    contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outlines = []
    for contour in contours:
        if len(contour) > max_points:
            contour = cv2.approxPolyDP(contour, cv2.arcLength(contour, True) / max_points, True)
        outlines.append(contour.reshape(-1, 2).astype(int).tolist())
    return outlines


def frame_size(result: dict, mask: np.ndarray) -> tuple[int, int]:
    """(width, height) of the frame the result is about."""
    return int(mask.shape[1]), int(mask.shape[0])
