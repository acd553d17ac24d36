"""Anomaly-detection metrics: image/pixel AUROC, AUPRO, the F1-optimal pixel threshold, IOU and DICE.

Shapes: `labels` (N,) bool, True for a defective image; `scores` (N,) image anomaly scores;
`masks` (N, H, W) bool ground truth; `maps` (N, H, W) pixel anomaly scores. A pixel is predicted
defective when `map > threshold`.

AUROC, AUPRO and F1 lie in [0, 1]. IOU and DICE are reported x100 and averaged over the images
that contain a defect, as the F2PAD paper does. A metric the data cannot define (an AUROC with one
class only) is NaN rather than an error, so a table with a defect-free subset still prints.
"""

from __future__ import annotations

import cv2
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from inspectd.geometry import dice, iou  # noqa: F401  (mask overlap lives with mask geometry)

GOOD = "good"  # the defect type of normal test images (MVTec layout)

# roc_auc_score and precision_recall_curve sort every pixel: 2-3 s for 5.5M pixels on 2 cores.
# A fixed random sample of 2M pixels takes a third of that and moves pixel AUROC by about its
# sampling error, ~0.001 (0.0005 on 83 synthetic 256x256 maps).
MAX_CURVE_PIXELS = 2_000_000


def _has_both_classes(truth: np.ndarray) -> bool:
    return bool(truth.any()) and not bool(truth.all())


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels, bool)
    return float(roc_auc_score(labels, scores)) if _has_both_classes(labels) else float("nan")


def _curve_pixels(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pixels as flat (truth, score), or a seeded random subset of MAX_CURVE_PIXELS of them."""
    truth, score = np.asarray(masks, bool).ravel(), np.asarray(maps).ravel()
    if truth.size > MAX_CURVE_PIXELS:
        # seeded, so the same data always gives the same numbers; random, so no column aliasing
        keep = np.random.default_rng(0).random(truth.size) < MAX_CURVE_PIXELS / truth.size
        truth, score = truth[keep], score[keep]
    return truth, score


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    truth, score = _curve_pixels(masks, maps)
    return float(roc_auc_score(truth, score)) if _has_both_classes(truth) else float("nan")


def f1_optimal_threshold(masks: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    """The threshold whose prediction `map > threshold` has the best pixel F1, and that F1."""
    truth, score = _curve_pixels(masks, maps)
    if not truth.any():
        return float(score.max()), float("nan")  # nothing to find: predict nothing
    precision, recall, thresholds = precision_recall_curve(truth, score)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))  # the last point (recall 0) has no threshold
    # sklearn predicts `score >= t`; one step below t in the scores' own dtype makes `>` select the same pixels
    return float(np.nextafter(thresholds[best], -np.inf)), float(f1[best])


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap curve for FPR in [0, max_fpr], divided by max_fpr (MVTec AD).

    PRO(t) is the mean, over every connected defect region of every image, of the share of the
    region's pixels scoring at or above t, so a thin scratch weighs as much as a large stain.
    FPR(t) is the share of all normal pixels scoring at or above t. A perfect map gives 1.0, a
    random or constant one about max_fpr / 2.

    Every distinct score is a threshold, so the curve is exact; one sort of all pixels computes it
    (about 1 s for 83 images of 256 x 256 on 2 cores, no faster with a few hundred binned thresholds).
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    masks, maps = np.asarray(masks, bool), np.asarray(maps)
    if not _has_both_classes(masks):
        return float("nan")
    fpr, pro = _pro_curve(masks, maps)
    return _area_up_to(fpr, pro, max_fpr) / max_fpr


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Each defect pixel weighs 1 / (size of its region), so a fully covered region adds exactly 1."""
    weights = np.zeros(masks.shape)
    n_regions = 0
    for weight, mask in zip(weights, masks):
        # 8-connectivity, like the 3x3 structuring element of the MVTec AD evaluation code
        count, regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        sizes = np.bincount(regions.ravel())
        weight[mask] = 1.0 / sizes[regions[mask]]
        n_regions += count - 1  # label 0 is the background
    return weights, n_regions


def _pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct score taken as threshold, from (0, 0) up to (1, 1).

    Lowering the threshold past a pixel adds that pixel to the prediction, so after one sort,
    highest score first, cumulative sums give FPR and PRO at every threshold at once.
    """
    weights, n_regions = _region_weights(masks)
    order = np.argsort(maps, axis=None)[::-1]
    normal = ~masks.ravel()
    fpr = np.cumsum(normal[order]) / np.count_nonzero(normal)
    pro = np.cumsum(weights.ravel()[order]) / n_regions
    # no threshold separates equal scores: keep only the point after the last pixel of each tie
    ranked = maps.ravel()[order]
    end_of_tie = np.append(ranked[1:] != ranked[:-1], True)
    fpr = np.concatenate([[0.0], fpr[end_of_tie]])
    pro = np.concatenate([[0.0], np.minimum(pro[end_of_tie], 1.0)])  # the sum of 1/size may round past 1
    return fpr, pro


def _area_up_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under a curve sorted by FPR, cut at FPR = limit by linear interpolation."""
    inside = fpr <= limit
    x, y = fpr[inside], pro[inside]
    if x[-1] < limit:  # close the area with the curve's value at the limit
        beyond = np.argmin(inside)  # the first point past the limit
        y_at_limit = np.interp(limit, [x[-1], fpr[beyond]], [y[-1], pro[beyond]])
        x, y = np.append(x, limit), np.append(y, y_at_limit)
    return float(np.trapezoid(y, x))


def segmentation_scores(masks: np.ndarray, maps_or_binary: np.ndarray, threshold: float | None = None) -> dict:
    """Mean IOU and DICE (x100) over the images whose truth mask is not empty, and their number n.

    With threshold=None the second argument is already a binary prediction.
    """
    masks = np.asarray(masks, bool)
    pred = np.asarray(maps_or_binary, bool) if threshold is None else np.asarray(maps_or_binary) > threshold
    defective = [i for i, mask in enumerate(masks) if mask.any()]
    if not defective:
        return {"iou": float("nan"), "dice": float("nan"), "n": 0}
    return {"iou": 100 * float(np.mean([iou(pred[i], masks[i]) for i in defective])),
            "dice": 100 * float(np.mean([dice(pred[i], masks[i]) for i in defective])),
            "n": len(defective)}


def _pixel_f1(masks: np.ndarray, maps: np.ndarray, threshold: float) -> float:
    """F1 of `map > threshold` over every pixel (no sort, so no sampling needed); NaN without defects."""
    if not masks.any():
        return float("nan")
    return dice(maps > threshold, masks)  # over pooled pixels, DICE = 2 TP / (predicted + true) = F1


def _all_metrics(labels, scores, masks, maps, threshold: float) -> dict:
    seg = segmentation_scores(masks, maps, threshold)
    return {"image_auroc": image_auroc(labels, scores), "pixel_auroc": pixel_auroc(masks, maps),
            "aupro": aupro(masks, maps), "iou": seg["iou"], "dice": seg["dice"],
            "f1": _pixel_f1(masks, maps, threshold),
            "threshold": float(threshold), "n_images": len(labels)}


def evaluate(labels, scores, masks, maps, defect_types: list[str], threshold: float | None = None) -> dict:
    """Every metric overall and per defect type.

    The pixel threshold is the F1-optimal one over all test images unless given, and the same for
    every row. A type's row is computed on its images plus the good ones (n_images counts both),
    so its AUROCs compare that defect against normal parts; its IOU/DICE cover its defective images.
    """
    labels, scores = np.asarray(labels, bool), np.asarray(scores)
    masks, maps = np.asarray(masks, bool), np.asarray(maps)
    if threshold is None:
        threshold, _ = f1_optimal_threshold(masks, maps)
    types = np.asarray(defect_types)
    per_type = {}
    for kind in sorted(set(defect_types) - {GOOD}):
        rows = (types == kind) | (types == GOOD)
        per_type[kind] = _all_metrics(labels[rows], scores[rows], masks[rows], maps[rows], threshold)
    return {"overall": _all_metrics(labels, scores, masks, maps, threshold), "per_type": per_type}


def format_table(result: dict) -> str:
    """One fixed-width row per defect type, then "overall"."""
    header = (f"{'type':<20}{'n':>5}{'img AUROC':>11}{'px AUROC':>10}{'AUPRO':>8}"
              f"{'F1':>7}{'IOU':>7}{'DICE':>7}{'threshold':>12}")
    lines = [header, "-" * len(header)]
    for name, m in [*result["per_type"].items(), ("overall", result["overall"])]:
        lines.append(f"{name:<20}{m['n_images']:>5d}{m['image_auroc']:>11.3f}{m['pixel_auroc']:>10.3f}"
                     f"{m['aupro']:>8.3f}{m['f1']:>7.3f}{m['iou']:>7.1f}{m['dice']:>7.1f}{m['threshold']:>12.6g}")
    return "\n".join(lines)
