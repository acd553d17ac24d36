"""Reading images of any common format, depth and channel count into one float RGB layout.

Every image inside inspectd is a float32 array in [0, 1], shape (H, W, 3), RGB order, or the
torch equivalent (B, 3, H, W). Masks are bool arrays of shape (H, W).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from inspectd.errors import BadImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to float RGB in [0, 1]; grey and RGBA become RGB."""
    buf = np.frombuffer(data, dtype=np.uint8)
    raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if raw is None:
        raise BadImageError(f"{name}: not a readable image (corrupt or unknown format)")
    return to_float_rgb(raw, name, bgr=True)


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
    """Encode float RGB or a bool mask as PNG bytes."""
    out = img.astype(np.uint8) * 255 if img.dtype == bool else (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
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
