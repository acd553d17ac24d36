"""Normal "parts" cut from the textures that ship inside scikit-image (no download needed).

Used by the demo line, the embedded demo data and the tests.
"""

from __future__ import annotations

import numpy as np
import skimage.data

from inspectd.data.images import resize_image
from inspectd.errors import ConfigError

TEXTURES = ("brick", "gravel", "grass")


def texture_parts(name: str = "brick", n: int = 12, size: int = 96, seed: int = 0,
                  tint: tuple[float, float, float] = (1.0, 0.9, 0.8)) -> np.ndarray:
    """`n` random crops (2*size, resized to size) of a grey texture, tinted to RGB, in [0, 1]."""
    if name not in TEXTURES:
        raise ConfigError(f"unknown texture {name!r}; available: {', '.join(TEXTURES)}")
    grey = getattr(skimage.data, name)().astype(np.float32) / 255.0
    crop = min(2 * size, grey.shape[0] - 1)
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n):
        y, x = rng.integers(0, grey.shape[0] - crop, size=2)
        patch = resize_image(np.repeat(grey[y : y + crop, x : x + crop, None], 3, axis=2), size)
        parts.append(np.clip(patch * np.asarray(tint, np.float32), 0, 1))
    return np.stack(parts).astype(np.float32)
