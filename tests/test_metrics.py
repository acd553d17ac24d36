"""Metrics against hand-computed values, extremes (perfect, inverted, random, constant) and a
brute-force AUPRO reference on tiny data. Every test runs in well under a second."""

import numpy as np
import pytest
from skimage.measure import label

from inspectd.eval import metrics as M


# --- AUROC -----------------------------------------------------------------------------------

def test_image_auroc_perfect_inverted_tied_and_undefined():
    labels = np.array([0, 0, 1, 1], bool)
    assert M.image_auroc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert M.image_auroc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    # positive/negative pairs ranked right: 0.5>0.1, 0.9>0.1, 0.9>0.5, and the 0.5/0.5 tie counts half
    assert M.image_auroc(labels, np.array([0.1, 0.5, 0.5, 0.9])) == pytest.approx(3.5 / 4)
    assert np.isnan(M.image_auroc(np.zeros(3, bool), np.arange(3.0)))


def test_random_scores_give_auroc_near_one_half():
    rng = np.random.default_rng(0)
    assert M.image_auroc(rng.random(4000) < 0.3, rng.random(4000)) == pytest.approx(0.5, abs=0.03)
    masks = rng.random((4, 32, 32)) < 0.2
    assert M.pixel_auroc(masks, rng.random(masks.shape)) == pytest.approx(0.5, abs=0.03)


def test_pixel_auroc_hand_computed_and_undefined():
    masks = np.array([[[True, False], [False, False]]])
    maps = np.array([[[0.5, 0.6], [0.1, 0.2]]])
    assert M.pixel_auroc(masks, maps) == pytest.approx(2 / 3)  # the defect outranks 2 of 3 normal pixels
    assert np.isnan(M.pixel_auroc(np.zeros((1, 2, 2), bool), maps))


def test_pixel_sampling_is_deterministic_and_close(monkeypatch):
    rng = np.random.default_rng(1)
    masks = rng.random((5, 40, 40)) < 0.1
    maps = rng.random(masks.shape) + 0.5 * masks
    exact = M.pixel_auroc(masks, maps)
    monkeypatch.setattr(M, "MAX_CURVE_PIXELS", 3000)  # 8000 pixels -> a sample of about 3000
    sampled = M.pixel_auroc(masks, maps)
    assert sampled == M.pixel_auroc(masks, maps) and sampled != exact
    assert sampled == pytest.approx(exact, abs=0.03)


# --- AUPRO -----------------------------------------------------------------------------------

def brute_force_aupro(masks, maps, max_fpr=0.3):
    """Straight from the definition: every score (and +inf) as threshold, prediction `map >= t`,
    each region's coverage counted directly; regions labelled with skimage rather than OpenCV."""
    regions = [(i, label(m, connectivity=2)) for i, m in enumerate(masks)]
    regions = [(i, lab == r) for i, lab in regions for r in range(1, lab.max() + 1)]
    points = []
    for t in np.append(np.unique(maps), np.inf):
        pred = maps >= t
        fpr = pred[~masks].mean()
        pro = np.mean([pred[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    fpr, pro = np.array(sorted(points)).T
    # trapezoid area up to max_fpr, the curve cut there by linear interpolation
    cut = np.searchsorted(fpr, max_fpr, side="right")
    y_cut = np.interp(max_fpr, fpr[cut - 1: cut + 1], pro[cut - 1: cut + 1])
    area = np.trapezoid(np.append(pro[:cut], y_cut), np.append(fpr[:cut], max_fpr))
    return area / max_fpr


@pytest.fixture
def three_images_five_regions():
    masks = np.zeros((3, 12, 12), bool)
    masks[0, 2:5, 2:5] = True
    masks[0, 8:10, 7:11] = True
    masks[0, 11, 0] = True  # a one-pixel defect
    masks[1, 5:9, 5:7] = True
    masks[1, 9, 7] = True  # diagonal neighbour: the same region under 8-connectivity
    masks[1, 0:2, 10:12] = True
    return masks  # image 2 is defect-free


def test_aupro_matches_brute_force(three_images_five_regions):
    masks = three_images_five_regions
    maps = np.random.default_rng(0).random(masks.shape) + 0.5 * masks
    assert M.aupro(masks, maps) == pytest.approx(brute_force_aupro(masks, maps), abs=1e-9)
    tied = np.round(maps, 1)  # many equal scores: a threshold must take or leave all of them
    assert M.aupro(masks, tied) == pytest.approx(brute_force_aupro(masks, tied), abs=1e-9)
    assert M.aupro(masks, maps, max_fpr=0.05) == pytest.approx(brute_force_aupro(masks, maps, 0.05), abs=1e-9)


def test_aupro_perfect_constant_and_random(three_images_five_regions):
    masks = three_images_five_regions
    assert M.aupro(masks, masks + 0.1 * np.random.default_rng(0).random(masks.shape)) == pytest.approx(1.0)
    # a constant map jumps straight from (0, 0) to (1, 1): area 0.3 * 0.3 / 2, normalised 0.15
    assert M.aupro(masks, np.zeros(masks.shape)) == pytest.approx(0.15)
    rng = np.random.default_rng(2)
    many = rng.random((8, 64, 64)) < 0.02  # scattered defects: hundreds of regions
    assert M.aupro(many, rng.random(many.shape)) == pytest.approx(0.15, abs=0.02)  # PRO ~ FPR


def test_aupro_weighs_every_region_equally():
    masks = np.zeros((1, 10, 10), bool)
    masks[0, :5] = True  # a 50-pixel stain, found
    masks[0, 9, 9] = True  # a 1-pixel pit, scored below every normal pixel
    maps = np.where(masks, 1.0, np.linspace(0.2, 0.8, 100).reshape(1, 10, 10))
    maps[0, 9, 9] = 0.0
    # PRO stays at 1/2 (one region of two) over the whole FPR range, despite 50 of 51 pixels found
    assert M.aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_undefined_and_bad_limit(three_images_five_regions):
    maps = np.random.default_rng(0).random((2, 4, 4))
    assert np.isnan(M.aupro(np.zeros((2, 4, 4), bool), maps))
    with pytest.raises(ValueError):
        M.aupro(three_images_five_regions, three_images_five_regions, max_fpr=0)


# --- F1-optimal threshold --------------------------------------------------------------------

def test_f1_threshold_separates_a_separable_case():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 0] = True
    masks[1, 1:3, 1:3] = True
    maps = np.where(masks, 0.9, 0.1) + np.linspace(0, 0.05, 32).reshape(masks.shape)
    threshold, f1 = M.f1_optimal_threshold(masks, maps)
    assert f1 == 1.0
    assert np.array_equal(maps > threshold, masks)  # the `>` rule used everywhere else reproduces it


def test_f1_threshold_hand_computed():
    truth = np.array([[[1, 0, 1, 0, 0]]], bool)
    maps = np.array([[[0.9, 0.8, 0.7, 0.2, 0.1]]])
    # F1 when taking the top 1..4 pixels: 2/3, 1/2, 4/5, 2/3 -> best is the top three
    threshold, f1 = M.f1_optimal_threshold(truth, maps)
    assert f1 == pytest.approx(0.8)
    assert np.array_equal(maps > threshold, np.array([[[1, 1, 1, 0, 0]]], bool))
    assert 0.2 < threshold < 0.7 + 1e-9


def test_f1_threshold_of_float32_maps_keeps_the_boundary_pixel():
    truth = np.array([[[1, 1, 0, 0]]], bool)
    maps = np.array([[[0.7, 0.6, 0.3, 0.2]]], np.float32)
    threshold, f1 = M.f1_optimal_threshold(truth, maps)
    assert f1 == 1.0 and np.array_equal(maps > threshold, truth)


def test_f1_threshold_without_defects_predicts_nothing():
    maps = np.random.default_rng(0).random((2, 4, 4))
    threshold, f1 = M.f1_optimal_threshold(np.zeros(maps.shape, bool), maps)
    assert np.isnan(f1) and not (maps > threshold).any()


# --- IOU / DICE ------------------------------------------------------------------------------

def test_iou_and_dice_of_known_shapes():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:4] = True  # 16 px
    b[2:6, 0:4] = True  # 16 px, 8 of them shared
    assert M.iou(a, b) == pytest.approx(8 / 24)
    assert M.dice(a, b) == pytest.approx(16 / 32)
    assert M.iou(a, a) == 1.0 and M.dice(a, a) == 1.0
    c = np.zeros((10, 10), bool)
    c[6:, 6:] = True
    assert M.iou(a, c) == 0.0 and M.dice(a, c) == 0.0  # disjoint
    empty = np.zeros((10, 10), bool)
    assert M.iou(empty, empty) == 1.0 and M.dice(empty, empty) == 1.0
    assert M.iou(a, empty) == 0.0 and M.dice(empty, a) == 0.0


def test_segmentation_scores_average_over_defective_images_only():
    truth = np.zeros((3, 4, 4), bool)
    truth[0, :2] = True
    truth[1, :, :1] = True
    pred = truth.copy()
    pred[1] = False  # image 1 missed entirely (0); image 0 perfect (100)
    pred[2, 0, 0] = True  # a false alarm on image 2, which has no defect and is not averaged
    s = M.segmentation_scores(truth, pred)
    assert s == {"iou": pytest.approx(50.0), "dice": pytest.approx(50.0), "n": 2}
    # a score map with a threshold gives the same as its binarisation
    assert M.segmentation_scores(truth, pred * 0.8 + 0.1, threshold=0.5) == s
    assert np.isnan(M.segmentation_scores(truth[2:], pred[2:])["iou"])


# --- evaluate / format_table -----------------------------------------------------------------

@pytest.fixture
def small_test_set():
    types = ["good", "crack", "stain", "good", "stain"]
    masks = np.zeros((5, 8, 8), bool)
    masks[1, :3, :3] = True
    masks[2, 4:, 4:] = True
    masks[4, 0, :] = True
    maps = np.random.default_rng(1).random(masks.shape) * 0.5 + masks  # pixels perfectly separable
    labels = np.array([t != "good" for t in types])
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.8])  # crack sits between the two good images
    return labels, scores, masks, maps, types


def test_evaluate_overall_and_per_type(small_test_set):
    labels, scores, masks, maps, types = small_test_set
    result = M.evaluate(labels, scores, masks, maps, types)
    overall, crack, stain = result["overall"], result["per_type"]["crack"], result["per_type"]["stain"]
    assert set(result["per_type"]) == {"crack", "stain"}
    assert set(overall) == {"image_auroc", "pixel_auroc", "aupro", "iou", "dice", "f1", "threshold", "n_images"}
    # image AUROC: crack vs good 1 of 2 pairs, stain vs good 4 of 4, overall 5 of 6 pairs
    assert crack["image_auroc"] == 0.5 and stain["image_auroc"] == 1.0
    assert overall["image_auroc"] == pytest.approx(5 / 6)
    assert (overall["n_images"], crack["n_images"], stain["n_images"]) == (5, 3, 4)  # a type + the good ones
    for row in (overall, crack, stain):
        assert row["pixel_auroc"] == 1.0 and row["aupro"] == pytest.approx(1.0) and row["f1"] == 1.0
        assert row["iou"] == 100.0 and row["dice"] == 100.0
        assert row["threshold"] == overall["threshold"]
    assert maps[~masks].max() < overall["threshold"] < maps[masks].min()


def test_evaluate_uses_a_given_threshold(small_test_set):
    labels, scores, masks, maps, types = small_test_set
    result = M.evaluate(labels, scores, masks, maps, types, threshold=2.0)  # above every score
    crack = result["per_type"]["crack"]
    assert crack["threshold"] == 2.0 and crack["iou"] == 0.0 and crack["f1"] == 0.0


def test_table_has_a_row_per_type_and_every_column(small_test_set):
    table = M.format_table(M.evaluate(*small_test_set))
    lines = table.splitlines()
    assert len(lines) == 2 + 3  # header, rule, crack, stain, overall
    for word in ("img AUROC", "px AUROC", "AUPRO", "F1", "IOU", "DICE", "threshold"):
        assert word in lines[0]
    assert lines[2].startswith("crack") and lines[3].startswith("stain") and lines[4].startswith("overall")
    assert "0.833" in lines[4] and "100.0" in lines[4]  # AUROC as 0.xxx, IOU/DICE as xx.x
    assert len({len(line) for line in lines}) == 1  # fixed width
