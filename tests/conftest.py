"""Shared fixtures: small normal images cut from scikit-image textures, and fitted methods.

Nothing here needs ../shared/data; tests that do are marked `shared_data` and skip when absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

from inspectd.data.images import resize_image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_bottle"
SIZE = 96


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"shared data not found at {SHARED_DATA}")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


def texture_crops(name: str = "brick", n: int = 12, size: int = SIZE, seed: int = 0, tint=(1.0, 0.9, 0.8)) -> np.ndarray:
    """`n` random crops of a scikit-image texture, tinted to RGB, as float images in [0, 1]."""
    grey = getattr(skimage.data, name)().astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    crop = 2 * size
    out = []
    for _ in range(n):
        y, x = rng.integers(0, grey.shape[0] - crop, size=2)
        patch = resize_image(grey[y : y + crop, x : x + crop, None].repeat(3, 2), size)
        out.append(np.clip(patch * np.array(tint, np.float32), 0, 1))
    return np.stack(out).astype(np.float32)


def paste_square(image: np.ndarray, top: int, left: int, side: int, colour=(1.0, 0.1, 0.6)):
    """A copy of `image` with a solid square of `colour`, and its mask."""
    out = image.copy()
    mask = np.zeros(image.shape[:2], bool)
    mask[top : top + side, left : left + side] = True
    out[mask] = colour
    return out, mask


def paste_disk(image: np.ndarray, cy: int, cx: int, radius: int, colour=(0.1, 0.9, 0.2)):
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    out = image.copy()
    out[mask] = colour
    return out, mask


@pytest.fixture(scope="session")
def normals() -> np.ndarray:
    return texture_crops(n=12)


@pytest.fixture(scope="session")
def fitted(normals):
    """PaDiM and PatchCore fitted once on the texture crops (small, CPU-fast settings)."""
    from inspectd.methods import create_method

    torch.manual_seed(0)
    methods = {}
    for name in ("padim", "patchcore"):
        m = create_method(name, {"image_size": SIZE})
        m.fit(normals, progress=False)
        methods[name] = m
    return methods
