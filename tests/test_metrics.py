import numpy as np
import pytest

from inspectd.eval import metrics as M


def test_auroc_perfect_inverted_and_undefined():
    labels = np.array([0, 0, 1, 1], bool)
    assert M.image_auroc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert M.image_auroc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert np.isnan(M.image_auroc(np.zeros(3, bool), np.arange(3.0)))


def test_pixel_auroc_hand_computed():
    masks = np.array([[[True, False], [False, False]]])
    maps = np.array([[[0.5, 0.6], [0.1, 0.2]]])
    # the defect pixel outranks 2 of the 3 normal pixels
    assert M.pixel_auroc(masks, maps) == pytest.approx(2 / 3)


def test_iou_and_dice_of_known_shapes():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:4] = True  # 16 px
    b[2:6, 0:4] = True  # 16 px, overlap 8
    assert M.iou(a, b) == pytest.approx(8 / 24)
    assert M.dice(a, b) == pytest.approx(16 / 32)
    empty = np.zeros((3, 3), bool)
    assert M.iou(empty, empty) == 1.0 and M.dice(empty, empty) == 1.0


def test_segmentation_scores_average_over_defective_images_only():
    truth = np.zeros((3, 4, 4), bool)
    truth[0, :2] = True
    truth[1, :, :1] = True
    pred = truth.copy()
    pred[1] = False  # image 1 missed entirely; image 2 has no defect and is ignored
    pred[2, 0, 0] = True
    s = M.segmentation_scores(truth, pred)
    assert s["n"] == 2 and s["iou"] == pytest.approx(50.0) and s["dice"] == pytest.approx(50.0)


def test_f1_threshold_separates_a_separable_case():
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0] = True
    maps = np.where(masks, 0.9, 0.1) + np.linspace(0, 0.05, 16).reshape(1, 4, 4)
    thr, f1 = M.f1_optimal_threshold(masks, maps)
    assert f1 == pytest.approx(1.0)
    assert np.array_equal(maps > thr - 1e-9, masks) or np.array_equal(maps >= thr, masks)


def brute_force_aupro(masks, maps, max_fpr=0.3):
    """Reference: every distinct normal score as a threshold, PRO by direct region counting."""
    import cv2

    normal = maps[~masks]
    regions = []
    for m, a in zip(masks, maps):
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        regions += [a[lab == r] for r in range(1, n)]
    pts = []
    for t in np.unique(np.concatenate([normal, [normal.max() + 1]])):
        fpr = (normal > t).mean()
        pro = np.mean([(r > t).mean() for r in regions])
        pts.append((fpr, pro))
    pts.sort()
    x, y = np.array(pts).T
    return M._area_up_to(x, y, max_fpr) / max_fpr


def test_aupro_matches_brute_force_and_extremes():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 12, 12), bool)
    masks[0, 2:5, 2:5] = True
    masks[0, 8:10, 7:11] = True
    masks[1, 5:9, 5:7] = True
    maps = rng.random(masks.shape) + 0.6 * masks
    assert M.aupro(masks, maps, num_thresholds=2000) == pytest.approx(brute_force_aupro(masks, maps), abs=0.01)
    assert M.aupro(masks, masks.astype(float) + 0.01 * rng.random(masks.shape)) == pytest.approx(1.0)
    assert M.aupro(masks, rng.random(masks.shape)) < 0.3  # random maps: PRO ~ FPR, area ~ 0.15


def test_evaluate_and_table_cover_every_type():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 8, 8), bool)
    masks[1, :3, :3] = True
    masks[2, 4:, 4:] = True
    maps = rng.random(masks.shape) * 0.5 + masks
    labels = masks.reshape(4, -1).any(1)
    types = ["good", "crack", "stain", "good"]
    result = M.evaluate(labels, maps.reshape(4, -1).max(1), masks, maps, types)
    assert set(result["per_type"]) == {"crack", "stain"}
    assert result["overall"]["image_auroc"] == 1.0 and result["overall"]["iou"] > 90
    table = M.format_table(result)
    for word in ("crack", "stain", "overall", "AUPRO"):
        assert word in table
