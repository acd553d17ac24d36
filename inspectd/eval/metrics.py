"""Anomaly-detection metrics: image/pixel AUROC, AUPRO, the F1-optimal threshold, IOU and DICE.

IOU and DICE are reported x100 and averaged over the images that contain a defect, as the
F2PAD paper does.
"""

from __future__ import annotations

import cv2
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

GOOD = "good"
MAX_PIXELS = 4_000_000  # beyond this, pixel curves use a deterministic strided sample


def _both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any()) and not bool(labels.all())


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels, bool)
    return float(roc_auc_score(labels, scores)) if _both_classes(labels) else float("nan")


def _pixels(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth, score = np.asarray(masks, bool).ravel(), np.asarray(maps, np.float32).ravel()
    if truth.size > MAX_PIXELS:
        step = int(np.ceil(truth.size / MAX_PIXELS))
        truth, score = truth[::step], score[::step]
    return truth, score


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    truth, score = _pixels(masks, maps)
    return float(roc_auc_score(truth, score)) if _both_classes(truth) else float("nan")


def f1_optimal_threshold(masks: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    """The pixel threshold with the best F1 over all pixels, and that F1."""
    truth, score = _pixels(masks, maps)
    if not truth.any():
        return float(score.max()), float("nan")
    precision, recall, thresholds = precision_recall_curve(truth, score)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    return float(thresholds[best]), float(f1[best])


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3, num_thresholds: int = 400) -> float:
    """Area under the per-region-overlap curve for FPR in [0, max_fpr], divided by max_fpr.

    Every connected defect region counts equally, whatever its size. Thresholds are quantiles
    of the normal pixels' scores, so the FPR axis is sampled evenly where it matters.
    """
    masks = np.asarray(masks, bool)
    maps = np.asarray(maps, np.float32)
    normal_scores = maps[~masks]
    if normal_scores.size == 0 or not masks.any():
        return float("nan")
    # thresholds at quantiles of the normal scores sample the FPR axis evenly where it matters
    thresholds = np.quantile(normal_scores, 1 - np.linspace(0, max_fpr, num_thresholds))
    sorted_normal = np.sort(normal_scores)
    fpr = (sorted_normal.size - np.searchsorted(sorted_normal, thresholds, side="right")) / sorted_normal.size
    region_scores = []
    for mask, amap in zip(masks, maps):
        n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        region_scores += [np.sort(amap[labels == region]) for region in range(1, n)]
    # PRO(t) = mean over regions of the share of the region's pixels scoring above t
    pro = np.zeros(num_thresholds)
    for scores in region_scores:
        pro += (scores.size - np.searchsorted(scores, thresholds, side="right")) / scores.size
    pro /= len(region_scores)
    return _area_up_to(fpr, pro, max_fpr) / max_fpr


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) for x in [0, limit], interpolating y at the limit."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    y_at_limit = np.interp(limit, x, y)
    keep = x < limit
    x = np.concatenate([[0.0], x[keep], [limit]])
    y = np.concatenate([[y[0] if x.size else 0.0], y[keep], [y_at_limit]])
    return float(np.trapezoid(y, x))


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, truth).sum() / total)


def segmentation_scores(masks: np.ndarray, maps_or_binary: np.ndarray, threshold: float | None = None) -> dict:
    """Mean IOU and DICE (x100) over the images whose truth mask is not empty."""
    masks = np.asarray(masks, bool)
    pred = np.asarray(maps_or_binary) > threshold if threshold is not None else np.asarray(maps_or_binary, bool)
    defective = [i for i in range(len(masks)) if masks[i].any()]
    if not defective:
        return {"iou": float("nan"), "dice": float("nan"), "n": 0}
    return {"iou": 100 * float(np.mean([iou(pred[i], masks[i]) for i in defective])),
            "dice": 100 * float(np.mean([dice(pred[i], masks[i]) for i in defective])),
            "n": len(defective)}


def _metrics(labels, scores, masks, maps, threshold) -> dict:
    f1 = None
    truth, score = _pixels(masks, maps)
    if truth.any():
        pred = score > threshold
        tp = np.logical_and(pred, truth).sum()
        f1 = float(2 * tp / max(pred.sum() + truth.sum(), 1))
    seg = segmentation_scores(masks, maps, threshold)
    return {"image_auroc": image_auroc(labels, scores), "pixel_auroc": pixel_auroc(masks, maps),
            "aupro": aupro(masks, maps), "iou": seg["iou"], "dice": seg["dice"],
            "f1": float("nan") if f1 is None else f1, "threshold": float(threshold), "n_images": int(len(labels))}


def evaluate(labels, scores, masks, maps, defect_types: list[str], threshold: float | None = None) -> dict:
    """Every metric overall and per defect type (each type's images plus the good ones)."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores)
    masks, maps = np.asarray(masks, bool), np.asarray(maps)
    if threshold is None:
        threshold, _ = f1_optimal_threshold(masks, maps)
    types = np.asarray(defect_types)
    per_type = {}
    for kind in sorted(set(defect_types) - {GOOD}):
        idx = np.nonzero((types == kind) | (types == GOOD))[0]
        per_type[kind] = _metrics(labels[idx], scores[idx], masks[idx], maps[idx], threshold)
    return {"overall": _metrics(labels, scores, masks, maps, threshold), "per_type": per_type}


def format_table(result: dict) -> str:
    header = f"{'type':<16}{'img AUROC':>10}{'px AUROC':>10}{'AUPRO':>8}{'IOU':>7}{'DICE':>7}{'F1':>7}{'n':>5}"
    rows = [header, "-" * len(header)]
    for name, m in [*result["per_type"].items(), ("overall", result["overall"])]:
        rows.append(f"{name:<16}{m['image_auroc']:>10.3f}{m['pixel_auroc']:>10.3f}{m['aupro']:>8.3f}"
                    f"{m['iou']:>7.1f}{m['dice']:>7.1f}{m['f1']:>7.3f}{m['n_images']:>5d}")
    return "\n".join(rows)
