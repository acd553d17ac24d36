"""Defect geometry: a binary mask and a score map -> one record per connected defect."""

from __future__ import annotations

import math

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
