"""The demo line's bundle: a method fitted and calibrated on defect-free texture parts.

One builder for `inspectd run` (the daemon's demo source) and `inspectd demo`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from inspectd.bundle.calibration import CalibrationConfig
from inspectd.bundle.fit import fit_bundle
from inspectd.data.textures import texture_parts
from inspectd.methods import load_method
from inspectd.methods.export import ONNX_FILE, export_to_bundle

log = logging.getLogger(__name__)
_lock = threading.Lock()  # `inspectd run` builds the capture and the refiner side in one process
# A lighter calibration than a real line's: the demo must start in about a minute on 2 cores.
DEMO_CALIBRATION = dict(synthetic_images=6, lam=(0.03, 0.1), normal_probes=2)


def fit_demo_bundle(out: str | Path, texture: str = "brick", size: int = 128, n_train: int = 40, seed: int = 0,
                    method: str = "patchcore", export: bool = True) -> Path:
    """Fit (first call only) and export the demo model at `out`; returns the bundle path."""
    out = Path(out)
    with _lock:
        if (out / "manifest.json").is_file() and (not export or (out / ONNX_FILE).is_file()):
            return out
        log.info("demo line: fitting %s on %d defect-free %s parts (first run only)", out, n_train, texture)
        normals = texture_parts(texture, n_train, size, seed=seed + 7)
        fit_bundle(method, f"<{texture} parts>", out, {"image_size": size}, holdout=0.2, seed=seed, progress=False,
                   train=normals, calibration=CalibrationConfig(seed=seed, **DEMO_CALIBRATION))
        if export:
            export_to_bundle(load_method(out), out)
    return out
