"""Camera frames on the capture's cheap path (data/images.py, service/capture.py Frame): sizes
read from headers, JPEG decoded at reduced size, shrunk in 8 bit, float only at screening size."""

import threading

import cv2
import numpy as np
import pytest

from inspectd.data.images import EncodedImage, jpeg_size, reduction_factor, screening_input, to_float_rgb
from inspectd.errors import BadImageError
from inspectd.service.capture import Frame, open_source
from inspectd.service.settings import CaptureSettings


def smooth_frame(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """8-bit RGB: smooth noise of 24 x 24 cells across the frame, coarse enough for a screening
    size of 128 to resolve (finer detail aliases differently in every resampler)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return cv2.resize(noise, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    return cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


@pytest.mark.parametrize("hw", [(777, 1001), (2048, 2448), (17, 9)])
def test_jpeg_size_is_read_from_the_header(hw):
    assert jpeg_size(jpeg(smooth_frame(hw))) == (hw[1], hw[0])


def test_a_jpeg_without_a_frame_header_is_refused():
    with pytest.raises(BadImageError, match="start-of-frame"):
        jpeg_size(b"\xff\xd8\xff\xe0\x00\x04ab")


def test_an_encoded_frame_above_the_pixel_limit_is_refused_before_decoding():
    data = jpeg(smooth_frame((300, 400)))
    with pytest.raises(BadImageError, match="above the limit"):
        EncodedImage(data, "big.jpg", max_pixels=300 * 400 - 1)


@pytest.mark.parametrize("hw, size, factor", [((2048, 2448), 256, 8), ((900, 900), 256, 2), ((1000, 800), 256, 2),
                                              ((1024, 1024), 256, 4), ((255, 4000), 256, 1), ((2047, 2048), 256, 8),
                                              ((2039, 2048), 256, 4)])
def test_reduction_keeps_the_screening_size_on_each_side(hw, size, factor):
    assert reduction_factor(hw, size) == factor


@pytest.mark.parametrize("hw", [(2048, 2448), (901, 1203)])
def test_reduced_decode_screens_like_the_full_frame(hw):
    """The cheap path (1/8 or 1/4 JPEG decode, 8-bit area shrink) gives the screening model what
    the full float path gives it, to within JPEG's own error."""
    image = smooth_frame(hw)
    frame = Frame("f", "cam", 0.0, None, encoded=EncodedImage(jpeg(image), "f.jpg"))
    cheap = frame.for_screening(128)
    full = cv2.resize(to_float_rgb(cv2.imdecode(np.frombuffer(jpeg(image), np.uint8), cv2.IMREAD_COLOR), bgr=True),
                      (128, 128), interpolation=cv2.INTER_AREA)
    assert cheap.shape == (128, 128, 3) and cheap.dtype == np.float32
    assert frame.image is None  # screening never decoded the native frame
    assert np.abs(cheap - full).mean() < 0.02 and np.abs(cheap - full).max() < 0.15
    native = frame.pixels()
    assert native.dtype == np.uint8 and native.shape == (*hw, 3) and frame.hw == hw
    assert np.abs(native.astype(int) - image).mean() < 3  # the JPEG's own loss only


def test_eight_bit_frames_shrink_before_they_become_float():
    image = smooth_frame((600, 808))
    small = screening_input(image, 64)
    reference = cv2.resize(image.astype(np.float32) / 255, (64, 64), interpolation=cv2.INTER_AREA)
    assert small.dtype == np.float32 and np.abs(small - reference).max() <= 1 / 255 + 1e-6
    assert np.array_equal(screening_input(small, 64), small)  # already at size: as it is


def test_native_folder_keeps_jpeg_encoded_and_decodes_png_to_8_bit(tmp_path):
    image = smooth_frame((90, 130))
    (tmp_path / "a.jpg").write_bytes(jpeg(image))
    cv2.imwrite(str(tmp_path / "b.png"), image[:, :, ::-1])
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8 truncated")
    errors = []
    settings = CaptureSettings(source="folder", uri=str(tmp_path), size=None)
    frames = [f for f in open_source(settings, "cam0", threading.Event(), errors.append) if f is not None]
    assert [f.source for f in frames] == ["a.jpg", "b.png"] and errors == ["bad_frame"]
    jpg, png = frames
    assert jpg.image is None and jpg.hw == (90, 130)
    assert png.image.dtype == np.uint8 and np.array_equal(png.image, image)
