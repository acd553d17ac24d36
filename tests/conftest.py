"""Shared fixtures: small normal images cut from scikit-image textures, and fitted methods.

Nothing here needs ../shared/data; tests that do are marked `shared_data` and skip when absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inspectd.data.textures import texture_parts

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_bottle"
SIZE = 96


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"shared data not found at {SHARED_DATA}")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


def texture_crops(name: str = "brick", n: int = 12, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return texture_parts(name, n, size, seed)


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
    # PaDiM on a coarser grid than its finest layer (the screening-sized variant)
    methods["padim-grid8"] = create_method("padim", {"image_size": SIZE, "grid_stride": 8}).fit(normals, progress=False)
    return methods


@pytest.fixture(scope="session")
def fitted_extra(normals):
    """CFLOW-AD, CFA and DFR fitted once on the texture crops, with tiny training budgets."""
    from inspectd.methods import create_method

    methods = {}
    for name in ("cflow", "cfa", "dfr"):
        m = create_method(name, {"image_size": SIZE, "epochs": 2.0})
        m.fit(normals, progress=False)
        methods[name] = m
    return methods


DEMO_SIZE = 96


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    """The demo line's model (configs/demo.yaml's PatchCore on brick parts, at 96 px), fitted,
    calibrated and exported once per test run."""
    from inspectd.bundle.demo import fit_demo_bundle

    return fit_demo_bundle(tmp_path_factory.mktemp("models") / "demo", "brick", DEMO_SIZE)
