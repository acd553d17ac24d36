"""Reading images of any common format, depth and channel count into one float RGB layout.

Every image inside inspectd is a float32 array in [0, 1], shape (H, W, 3), RGB order, or the
torch equivalent (B, 3, H, W). Masks are bool arrays of shape (H, W).
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from inspectd.errors import BadImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
# decoding is refused above this many pixels: a decoded float RGB image of this size is 300 MB
DEFAULT_MAX_PIXELS = 25_000_000  # a 20 MP camera frame fits; the settings default (transport.max_frame_pixels)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to float RGB in [0, 1]; grey and RGBA become RGB.

    The declared size (a PNG's IHDR, any other format's header as PIL reads it) is checked
    against max_pixels before anything is decoded, so a few hundred bytes declaring
    40000x40000 (or a decompression bomb) cost nothing.
    """
    width, height = png_header(data, name)[:2] if data[:8] == PNG_SIGNATURE else header_size(data, name)
    check_pixels(width, height, max_pixels, name)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    except cv2.error:  # OpenCV's own size cap (CV_IO_MAX_IMAGE_PIXELS) for the other formats
        raw = None
    if raw is None:
        raise BadImageError(f"{name}: not a readable image (corrupt, unknown format or too large)")
    if raw.shape[0] * raw.shape[1] > max_pixels:
        raise BadImageError(f"{name}: {raw.shape[1]}x{raw.shape[0]} exceeds the limit of {max_pixels} pixels")
    return to_float_rgb(raw, name, bgr=True)


# --- camera frames: screened small, kept native as 8 bit ------------------------------------
JPEG_SOI = b"\xff\xd8"
REDUCED_FLAGS = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


class EncodedImage:
    """A camera frame still encoded (a folder's JPEG). Its declared size is read from the header
    (and checked against max_pixels) without decoding; screening decodes it at reduced size,
    and the native pixels are decoded, once, only when something needs them (a flagged frame)."""

    def __init__(self, data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS):
        self.data, self.name = data, name
        self.width, self.height = declared_size(data, name)
        check_pixels(self.width, self.height, max_pixels, name)

    def decode(self) -> np.ndarray:
        """The native frame, 8-bit RGB."""
        return to_rgb8(imdecode(self.data, cv2.IMREAD_UNCHANGED, self.name), self.name, bgr=True)

    def decode_at_least(self, size: int) -> np.ndarray:
        """8-bit RGB at least size x size: a JPEG is decoded at 1/2, 1/4 or 1/8 of its size when
        that still leaves `size` pixels on each side (libjpeg skips the work: at 5 MP the 1/8
        decode is about 5x faster), any other format in full."""
        factor = reduction_factor((self.height, self.width), size) if self.data[:2] == JPEG_SOI else 1
        if factor == 1:
            return self.decode()
        return imdecode(self.data, REDUCED_FLAGS[factor], self.name)[:, :, ::-1]  # BGR -> RGB


def reduction_factor(hw: tuple[int, int], size: int) -> int:
    """The largest of 8, 4, 2 whose reduced decode (ceil(side / f)) keeps size pixels a side."""
    for factor in (8, 4, 2):
        if min(-(-hw[0] // factor), -(-hw[1] // factor)) >= size:
            return factor
    return 1


def imdecode(data: bytes, flags: int, name: str) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        raw = cv2.imdecode(buf, flags) if buf.size else None
    except cv2.error:
        raw = None
    if raw is None:
        raise BadImageError(f"{name}: not a readable image (corrupt, unknown format or too large)")
    return raw


def declared_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from a PNG's or JPEG's header, without decoding; other formats: decoded."""
    if data[:8] == PNG_SIGNATURE:
        return png_header(data, name)[:2]
    if data[:2] == JPEG_SOI:
        return jpeg_size(data, name)
    raw = imdecode(data, cv2.IMREAD_UNCHANGED, name)
    return raw.shape[1], raw.shape[0]


def jpeg_size(data: bytes, name: str = "<bytes>") -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame segment: walk the marker segments after SOI
    (each: 0xFF, marker, 2-byte big-endian length) to the first SOFn (C0-CF but C4, C8, CC)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 9 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    raise BadImageError(f"{name}: JPEG without a readable start-of-frame header")


def to_rgb8(raw: np.ndarray, name: str = "<array>", bgr: bool = False) -> np.ndarray:
    """An 8-bit frame (1, 3 or 4 channels) as 8-bit RGB (H, W, 3) without going through float:
    the native frame stays 3 bytes a pixel. Other depths go through to_float_rgb."""
    if raw.dtype != np.uint8:
        return to_float_rgb(raw, name, bgr)
    if raw.ndim == 2 or (raw.ndim == 3 and raw.shape[2] == 1):
        return cv2.cvtColor(raw.reshape(raw.shape[:2]), cv2.COLOR_GRAY2RGB)
    if raw.ndim != 3 or raw.shape[2] not in (3, 4):
        raise BadImageError(f"{name}: expected 1, 3 or 4 channels, got shape {raw.shape}")
    code = {(3, True): cv2.COLOR_BGR2RGB, (4, True): cv2.COLOR_BGRA2RGB, (4, False): cv2.COLOR_RGBA2RGB}
    key = (raw.shape[2], bgr)
    return cv2.cvtColor(raw, code[key]) if key in code else np.ascontiguousarray(raw)


def screening_input(image: np.ndarray, size: int) -> np.ndarray:
    """A frame (8-bit or float RGB, any size) as the screening model's float input, size x size.

    8-bit frames are shrunk in 8 bit (area averaging) and only the small result becomes float:
    a 5 MP frame never exists as float. Float frames are resized as they are.
    """
    if image.shape[:2] != (size, size):
        interp = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
        image = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interp)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0  # as to_float_rgb does
    return np.ascontiguousarray(image, dtype=np.float32)


# --- PNG headers: read and checked before decoding -------------------------------------------
def png_header(data: bytes, name: str = "<bytes>") -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk, without decoding.

    The PNG format puts IHDR first: signature (8 bytes), length (4), "IHDR", 13 bytes of
    fields, CRC (4). The CRC is checked so a damaged header is not trusted.
    """
    if data[:8] != PNG_SIGNATURE:
        raise BadImageError(f"{name}: not a PNG (no PNG signature)")
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise BadImageError(f"{name}: PNG without a valid IHDR header chunk")
    fields, (crc,) = data[16:29], struct.unpack(">I", data[29:33])
    if zlib.crc32(b"IHDR" + fields) != crc:
        raise BadImageError(f"{name}: PNG IHDR header chunk fails its CRC")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", fields[:10])
    return width, height, bit_depth, colour_type


def header_size(data: bytes, name: str = "<bytes>") -> tuple[int, int]:
    """(width, height) of a JPEG, PGM/PPM, BMP, TIFF or WebP from its header, without decoding.

    PIL's Image.open reads only the header; the pixels would be decoded on first access, which
    never happens here. Data whose header PIL cannot read is refused: its size is unknown.
    """
    try:
        with warnings.catch_warnings():  # sizes above PIL's own bomb limit: check_pixels says it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Image.DecompressionBombError as exc:  # above twice PIL's limit (about 179 MP): refused there
        raise BadImageError(f"{name}: declares too many pixels ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - PIL's format plugins raise many kinds on a broken header
        raise BadImageError(f"{name}: not a readable image (no header PIL can read: {exc})") from None


def check_png(data: bytes, max_pixels: int, name: str = "<bytes>",
              colour_types: tuple[int, ...] = (0, 2)) -> tuple[int, int]:
    """(width, height) of an 8-bit PNG of an accepted colour type within max_pixels, else BadImageError.

    The wire schema says "8-bit RGB" (frames) or "8-bit grey" (masks): JPEG, 16-bit or palette
    data labelled png is refused here, before any decoding.
    """
    width, height, bit_depth, colour_type = png_header(data, name)
    check_pixels(width, height, max_pixels, name)
    if bit_depth != 8:
        raise BadImageError(f"{name}: {bit_depth}-bit PNG, expected 8-bit")
    if colour_type not in colour_types:
        kinds = " or ".join(PNG_COLOUR_TYPES[t] for t in colour_types)
        raise BadImageError(f"{name}: PNG colour type {colour_type} "
                            f"({PNG_COLOUR_TYPES.get(colour_type, 'invalid')}), expected {kinds}")
    return width, height


def check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if width < 1 or height < 1:
        raise BadImageError(f"{name}: declares an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise BadImageError(f"{name}: declares {width}x{height} pixels, above the limit of {max_pixels}")


def to_float_rgb(raw: np.ndarray, name: str = "<array>", bgr: bool = False) -> np.ndarray:
    """Convert an 8/16-bit or float array with 1, 3 or 4 channels to float32 RGB in [0, 1]."""
    if raw.dtype == np.uint8:
        img = raw.astype(np.float32) / 255.0
    elif raw.dtype == np.uint16:
        img = raw.astype(np.float32) / 65535.0
    elif np.issubdtype(raw.dtype, np.floating):
        img = raw.astype(np.float32)
    else:
        raise BadImageError(f"{name}: unsupported pixel type {raw.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise BadImageError(f"{name}: expected 1, 3 or 4 channels, got shape {raw.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    else:
        img = img[:, :, :3]  # drop alpha
        if bgr:
            img = img[:, :, ::-1]
    if not np.isfinite(img).all():
        raise BadImageError(f"{name}: contains NaN or infinite pixel values")
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0))


def read_image(path: str | Path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Read an image file as float RGB in [0, 1], resized to `size` (square int or (H, W))."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    img = decode_image(data, str(path))
    return resize_image(img, size) if size is not None else img


def read_mask(path: str | Path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask: any non-zero pixel is defective."""
    img = read_image(path)
    mask = img.max(axis=2) > 0.5
    if size is not None:
        mask = resize_mask(mask, size)
    return mask


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    h, w = _hw(size)
    if img.shape[:2] == (h, w):
        return img
    shrinking = img.shape[0] > h or img.shape[1] > w
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=interp))


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    h, w = _hw(size)
    if mask.shape[:2] == (h, w):
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0


def write_image(path: str | Path, img: np.ndarray) -> None:
    """Write float RGB [0, 1] (or a bool mask) as an 8-bit image; the suffix picks the format."""
    path = Path(path)
    if img.dtype == bool:
        out = img.astype(np.uint8) * 255
    else:
        out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        if out.ndim == 3:
            out = out[:, :, ::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), out):
        raise BadImageError(f"{path}: could not write image")


def encode_png(img: np.ndarray) -> bytes:
    """Encode float or 8-bit RGB, or a bool mask, as PNG bytes."""
    if img.dtype == bool:
        out = img.astype(np.uint8) * 255
    elif img.dtype == np.uint8:
        out = img
    else:
        out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    if out.ndim == 3:
        out = out[:, :, ::-1]
    ok, buf = cv2.imencode(".png", out)
    if not ok:
        raise BadImageError("could not encode image as PNG")
    return buf.tobytes()


def to_tensor(images: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """(H,W,3) or a list/stack of them -> float tensor (B,3,H,W)."""
    arr = np.stack(images) if isinstance(images, list) else images
    if arr.ndim == 3:
        arr = arr[None]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous().float()


def to_numpy(images: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) tensor -> (B,H,W,3) float32 array."""
    return images.detach().permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
