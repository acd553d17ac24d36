import cv2
import numpy as np
import pytest

from inspectd.geometry import measure_defects


def ellipse(angle_deg, axes=(30, 10), size=128, centre=(64, 60)):
    img = np.zeros((size, size), np.uint8)
    # OpenCV draws angles clockwise on screen (y down); our convention is counter-clockwise
    cv2.ellipse(img, centre, axes, -angle_deg, 0, 360, 1, -1)
    return img.astype(bool)


@pytest.mark.parametrize("angle", [0, 30, 60, -45, 89])
def test_orientation_axes_and_centroid_of_an_ellipse(angle):
    (d,) = measure_defects(ellipse(angle))
    assert d["orientation_deg"] == pytest.approx(angle, abs=2.0)
    assert d["major_axis_px"] == pytest.approx(60, rel=0.05)
    assert d["minor_axis_px"] == pytest.approx(20, rel=0.1)
    assert d["centroid"] == pytest.approx([64, 60], abs=0.5)


def test_rectangle_area_bbox_scores_and_mm():
    mask = np.zeros((50, 60), bool)
    mask[10:20, 5:45] = True  # 10 x 40
    scores = np.zeros((50, 60), np.float32)
    scores[10:20, 5:45] = 2.0
    scores[15, 30] = 5.0
    (d,) = measure_defects(mask, scores, px_per_mm=10.0)
    assert d["area_px"] == 400 and d["bbox"] == [5, 10, 40, 10]
    assert d["area_mm2"] == pytest.approx(4.0)
    assert d["orientation_deg"] == pytest.approx(0.0, abs=1e-6)
    assert d["max_score"] == 5.0 and d["mean_score"] == pytest.approx((399 * 2 + 5) / 400, rel=1e-4)


def test_several_defects_sorted_and_small_ones_filtered():
    mask = np.zeros((40, 40), bool)
    mask[2:6, 2:6] = True
    mask[20:30, 20:30] = True
    mask[35, 35] = True
    defects = measure_defects(mask, min_area_px=2)
    assert [d["area_px"] for d in defects] == [100, 16]
    assert measure_defects(np.zeros((5, 5), bool)) == []
