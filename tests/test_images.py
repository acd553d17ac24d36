import struct

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


# --- PNG headers are checked before any decoding (issue 13) ------------------------------------
def png_with_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR declares any size, with `idat` as its (possibly truncated) pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat or zlib.compress(bytes(400))) + \
        chunk(b"IEND", b"")


def no_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the image was decoded before its header was checked")

    monkeypatch.setattr(cv2, "imdecode", fail)


def test_a_png_declaring_40000x40000_is_refused_from_its_header(monkeypatch):
    from inspectd.data.images import DEFAULT_MAX_PIXELS, check_png

    tiny_liar = png_with_header(40000, 40000)
    assert len(tiny_liar) < 500
    no_decoding(monkeypatch)
    with pytest.raises(BadImageError, match=r"frame-9: .*40000x40000.*limit"):
        check_png(tiny_liar, DEFAULT_MAX_PIXELS, "frame-9")
    with pytest.raises(BadImageError, match="40000x40000"):
        decode_image(tiny_liar, "frame-9")  # every decode is bounded, not only the wire's


def test_a_real_png_bomb_is_refused_cheaply(monkeypatch):
    """30000 x 30000 grey zeros: a few hundred kB that would inflate to 900 MB (3.6 GB as float RGB)."""
    import time
    import tracemalloc
    import zlib

    from inspectd.data.images import check_png

    from inspectd.eval.chaos import png_bomb

    side = 30000
    bomb = png_bomb(side)
    assert len(bomb) < 2_000_000 and len(zlib.decompressobj().decompress(bomb[41:41 + 20000], 10**6)) == 10**6
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(BadImageError, match="30000x30000"):
        decode_image(bomb, "bomb.png", max_pixels=4096 * 4096)
    seconds, (_, peak) = time.perf_counter() - started, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seconds < 0.05 and peak < 10_000_000
    with pytest.raises(BadImageError):
        check_png(bomb, 4096 * 4096, "bomb.png")


def jpeg_declaring(width: int, height: int) -> bytes:
    """An 8x8 JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8), ".jpg"))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def pgm_declaring(width: int, height: int) -> bytes:
    return f"P5\n{width} {height}\n255\n".encode() + bytes(64)


@pytest.mark.parametrize("liar", [jpeg_declaring, pgm_declaring], ids=["jpeg", "pgm"])
def test_a_jpeg_or_pgm_declaring_a_huge_size_is_refused_from_its_header(monkeypatch, liar):
    """10000x10000 is under OpenCV's own cap: before the fix it decoded 300 MB of pixels, then refused."""
    assert decode_image(liar(8, 8), "small").shape == (8, 8, 3)  # the same file, honest, decodes
    no_decoding(monkeypatch)
    with pytest.raises(BadImageError, match=r"huge: declares 10000x10000 pixels, above the limit of 25000000"):
        decode_image(liar(10000, 10000), "huge")
    with pytest.raises(BadImageError, match=r"huger: declares too many pixels \(Image size \(1600000000 pixels"):
        decode_image(liar(40000, 40000), "huger")  # above PIL's own limit: refused while reading the header


def test_data_without_a_readable_header_is_refused_by_name():
    with pytest.raises(BadImageError, match=r"junk\.bin: not a readable image \(no header PIL can read"):
        decode_image(b"GIF89a" + bytes(3), "junk.bin")
    with pytest.raises(BadImageError, match=r"empty: not a readable image"):
        decode_image(b"", "empty")


@pytest.mark.parametrize("data, why", [
    (encode(np.zeros((8, 8, 3), np.uint8), ".jpg"), "not a PNG"),
    (encode(np.full((8, 8), 65535, np.uint16)), "16-bit"),
    (png_with_header(8, 8, bit_depth=8, colour_type=3), "colour type 3"),
    (png_with_header(0, 8), "0x8"),
    (b"\x89PNG\r\n\x1a\n" + bytes(10), "IHDR"),
    (png_with_header(8, 8)[:20], "IHDR"),
    (png_with_header(8, 8).replace(b"IHDR", b"IHDQ"), "IHDR"),
])
def test_only_8_bit_rgb_or_grey_png_is_a_png(data, why):
    from inspectd.data.images import check_png

    with pytest.raises(BadImageError, match=why):
        check_png(data, 10**6, "x")


def test_png_header_gives_size_and_layout():
    from inspectd.data.images import check_png, png_header

    rgb = encode(np.zeros((5, 7, 3), np.uint8))
    assert png_header(rgb) == (7, 5, 8, 2)
    assert check_png(encode(np.zeros((5, 7), np.uint8)), 35, "x") == (7, 5)
    with pytest.raises(BadImageError, match="7x5 pixels, above the limit of 34"):
        check_png(rgb, 34, "x")
