import cv2
import numpy as np
import pytest

from inspectd.data.images import decode_image, encode_png, read_image, read_mask, to_float_rgb
from inspectd.errors import BadImageError


def encode(arr, ext=".png"):
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


def test_grey_becomes_three_equal_channels():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    img = decode_image(encode(grey))
    assert img.shape == (8, 8, 3) and img.dtype == np.float32
    assert np.allclose(img[..., 0], img[..., 2]) and np.isclose(img[0, 1, 0], 1 / 255)


def test_colour_order_is_rgb_and_alpha_dropped():
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 2] = 255  # red in OpenCV's BGR(A) order
    bgra[..., 3] = 10
    img = decode_image(encode(bgra))
    assert img.shape == (4, 4, 3)
    assert np.allclose(img[..., 0], 1.0) and np.allclose(img[..., 1:], 0.0)


def test_sixteen_bit_is_scaled():
    deep = np.full((4, 4), 65535, np.uint16)
    assert np.allclose(decode_image(encode(deep)), 1.0)


def test_corrupt_and_empty_bytes_name_the_input():
    with pytest.raises(BadImageError, match="frame-7"):
        decode_image(b"\x89PNG not really", "frame-7")
    with pytest.raises(BadImageError, match="empty.png"):
        decode_image(b"", "empty.png")


def test_missing_file_and_nan(tmp_path):
    with pytest.raises(BadImageError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(BadImageError, match="NaN"):
        to_float_rgb(np.full((2, 2, 3), np.nan, np.float32))


def test_read_resizes_and_masks_binarise(tmp_path):
    path = tmp_path / "m.png"
    m = np.zeros((20, 20), np.uint8)
    m[5:10, 5:10] = 255
    cv2.imwrite(str(path), m)
    assert read_image(path, 10).shape == (10, 10, 3)
    mask = read_mask(path, 10)
    assert mask.dtype == bool and mask[3:5, 3:5].all() and not mask[0].any() and mask.sum() <= 9


def test_png_round_trip():
    img = np.random.default_rng(0).random((6, 5, 3)).astype(np.float32)
    back = decode_image(encode_png(img))
    assert np.abs(back - img).max() <= 1 / 255 + 1e-6
