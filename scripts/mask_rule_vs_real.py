"""Issue 12, analysis (reads test labels: oracle, never a calibration input): is the gap between
F2PAD's masks and bottle's human outlines in the rule that turns ||A|| into a mask?

Each real defect is refined once at the bundle's size (the deployed chain); its ||A|| is then
turned into masks by the deployed rule (tau, closing, hole filling, minimum area) and by variants
of it (no closing, other closings, an opening or a median filter against speckle, ||A|| blurred
before tau), each upsampled to the data's resolution and scored there.

Usage: python scripts/mask_rule_vs_real.py BUNDLE DATA   (DATA: MVTec layout, any resolution)
"""
import sys

import cv2
import numpy as np
from scipy import ndimage

from inspectd.data.mvtec import load_test
from inspectd.deploy import Inspector
from inspectd.deploy.inspector import judge
from inspectd.deploy.native import downscale, upsample
from inspectd.geometry import iou
from inspectd.refine.f2pad import disk

VARIANTS = ["deployed", "no closing or filling", "no filling", "close 2", "close 8", "open 1", "median 3",
            "blur 3"]


def mask_by(variant: str, magnitude: np.ndarray, tau: float, close: int, fill: bool) -> np.ndarray:
    name, _, size = variant.partition(" ")
    mask = cv2.blur(magnitude, (3, 3)) > tau if name == "blur" else magnitude > tau
    if name == "open":
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disk(int(size))) > 0
    if name == "median":
        mask = cv2.medianBlur(mask.astype(np.uint8), int(size)) > 0
    if name == "close":
        close = int(size)
    if variant == "no closing or filling":
        close, fill = 0, False
    if variant == "no filling":
        fill = False
    if close and mask.any():
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, disk(close)) > 0
    return ndimage.binary_fill_holes(mask) if fill else mask


def main() -> None:
    bundle, data = sys.argv[1:3]
    inspector = Inspector.from_bundle(bundle, device="cpu")
    chain, f = inspector.settings, inspector.settings.f2pad
    test = load_test(data, None)
    scores = {v: [] for v in VARIANTS}
    for image, truth, defective in zip(test.images, test.masks, test.labels):
        if not defective:
            continue
        run = inspector.refine(downscale(image, inspector.image_size))
        if run.anomaly_magnitude is None:  # nothing to solve: every variant misses it
            for v in VARIANTS:
                scores[v].append((0.0, 1.0))
            continue
        for v in VARIANTS:
            mask = mask_by(v, run.anomaly_magnitude, f.tau, f.close_px, f.fill_holes)
            _, _, mask = judge(mask, run.coarse_map, chain.min_defect_area_px, None)
            full = upsample(mask, truth.shape)
            scores[v].append((100 * iou(full, truth), abs(int(full.sum()) - int(truth.sum())) / int(truth.sum())))
    for v, rows in scores.items():
        ious, errors = np.array(rows).T
        print(f"{v:24s} mean IOU {ious.mean():5.1f}  areas within 10 % {100 * np.mean(errors <= 0.1):5.1f} %  "
              f"median area error {100 * np.median(errors):5.1f} %")


if __name__ == "__main__":
    main()
