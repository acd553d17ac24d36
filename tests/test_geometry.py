import cv2
import numpy as np
import pytest

from inspectd.geometry import Box, FrameCrops, box_to_native, box_to_small, mask_box, measure_defects, native_to_small


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


# --- native <-> screening <-> crop coordinates ------------------------------------------------
SIZES = [(900, 256), (901, 255), (257, 256), (256, 256), (2000, 256), (1500, 255), (2047, 320)]


@pytest.mark.parametrize("native, small", SIZES)
def test_screening_box_round_trips_through_native_exactly(native, small):
    """Every box on the screening image -> its native pixels -> the same box, also at the borders."""
    rng = np.random.default_rng(native + small)
    edges = [(0, 1), (small - 1, small), (0, small)]
    spans = edges + [tuple(sorted(rng.choice(small + 1, 2, replace=False))) for _ in range(300)]
    for x0, x1 in spans:
        box = Box(int(x0), 0, int(x1 - x0), small)
        back = box_to_small(box_to_native(box, (native, native), (small, small)), (native, native), (small, small))
        assert back == box


@pytest.mark.parametrize("native, small", SIZES)
def test_native_box_is_covered_after_a_trip_through_screening(native, small):
    rng = np.random.default_rng(native * small)
    for _ in range(300):
        x0, x1 = sorted(rng.choice(native + 1, 2, replace=False))
        box = Box(int(x0), 0, int(x1 - x0), native)
        covered = box_to_native(box_to_small(box, (native, native), (small, small)), (native, native), (small, small))
        assert covered.x <= box.x and covered.x1 >= box.x1


def test_native_pixels_land_where_resizing_puts_them():
    """The map agrees with cv2.resize: a native pixel's value lands in the small pixel it names."""
    native, small = 901, 255
    marker = np.zeros((native, native), np.float32)
    marker[450, 7] = 1.0
    shrunk = cv2.resize(marker, (small, small), interpolation=cv2.INTER_AREA)
    y, x = np.unravel_index(np.argmax(shrunk), shrunk.shape)
    assert (y, x) == (native_to_small(450, native, small), native_to_small(7, native, small))


def test_crop_coordinates_round_trip_and_clip_at_borders():
    frame = Box(0, 0, 2000, 1500)
    crop = Box(1900, -20, 256, 256).clip(1500, 2000)
    assert crop == Box(1900, 0, 100, 236)
    inner = Box(1950, 10, 30, 40)
    assert inner.relative_to(crop).offset(crop) == inner
    assert Box.union([inner, Box(0, 0, 1, 1)]) == Box(0, 0, 1980, 50) and frame.overlaps(crop)


def test_mask_box_is_tight():
    mask = np.zeros((7, 9), bool)
    assert mask_box(mask) is None
    mask[2:5, 8] = True
    mask[6, 3] = True
    assert mask_box(mask) == Box(3, 2, 6, 5)


def test_frame_crops_read_like_the_frame_inside_them_and_zero_outside():
    frame = np.arange(20 * 30 * 3, dtype=np.float32).reshape(20, 30, 3)
    crops = FrameCrops.cut(frame, [Box(2, 3, 5, 4), Box(10, 0, 8, 20)])
    assert crops.shape == (20, 30, 3) and crops.dtype == np.float32 and crops.pixels == 5 * 4 + 8 * 20
    assert np.array_equal(crops[3:7, 2:7], frame[3:7, 2:7]) and np.array_equal(crops[5:9, 11:17], frame[5:9, 11:17])
    spanning = crops[0:20, 0:30]  # pixels outside every crop are 0
    assert np.array_equal(spanning[:, 10:18], frame[:, 10:18]) and not spanning[:, 20:].any()
    assert crops.covers(Box(10, 5, 8, 15)) and crops.covers(Box(3, 4, 2, 2))
    assert not crops.covers(Box(6, 3, 5, 4))  # straddles a crop's edge: not all known pixels
