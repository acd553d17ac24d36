"""The optional picture a result carries (refiner.preview): what it shows, and that it always fits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspectd.geometry import Box
from inspectd.service.preview import make_preview, preview_box


def test_defects_preview_shows_the_defects_with_context_inside_the_frame():
    box = preview_box(2048, 2448, "defects", [Box(2000, 1000, 12, 30), Box(2100, 1100, 10, 10)])
    assert box == Box(2000 - 55, 1000 - 55, 110 + 110, 110 + 110)  # half their union's size on each side
    assert preview_box(100, 100, "defects", [Box(90, 0, 10, 5)]) == Box(58, 0, 42, 37)  # clipped to the frame
    assert preview_box(100, 100, "defects", []) is None and preview_box(100, 100, "off", [Box(0, 0, 1, 1)]) is None
    assert preview_box(100, 120, "frame", []) == Box(0, 0, 120, 100)


def test_a_frame_preview_is_downscaled_and_fits_its_byte_budget():
    rng = np.random.default_rng(0)
    image = rng.random((1500, 2000, 3), np.float32)  # noise: the hardest picture to compress
    picture = make_preview(image, "frame", [], max_side=640, max_bytes=65536)
    assert picture is not None and len(picture.jpeg) <= 65536
    assert max(picture.width, picture.height) <= 640 and picture.width / picture.height == pytest.approx(4 / 3, 0.01)
    decoded = cv2.imdecode(np.frombuffer(picture.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (picture.height, picture.width, 3)


def test_the_picture_is_the_frame_content_in_rgb():
    image = np.zeros((64, 64, 3), np.float32)
    image[..., 0] = 1.0  # red
    picture = make_preview(image, "frame", [], max_side=64, max_bytes=65536)
    bgr = cv2.imdecode(np.frombuffer(picture.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert bgr[..., 2].mean() > 240 and bgr[..., 0].mean() < 15


def test_a_picture_that_cannot_fit_is_left_out():
    rng = np.random.default_rng(1)
    image = rng.random((512, 512, 3), np.float32)
    assert make_preview(image, "frame", [], max_side=512, max_bytes=200) is None
