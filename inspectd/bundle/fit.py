"""`inspectd fit`: fit a method on normal images, calibrate the chain, write the bundle.

A share of train/good is held out of fitting; the chain's thresholds and F2PAD settings are
calibrated on those held-out normal images and on realistic synthetic defects pasted on them
(bundle/calibration.py). A handful of labelled real defects (`--defects`) can join the
calibration. No test image is read unless it is one of the defects explicitly given.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np

from inspectd.bundle.assets import CALIBRATION_FILE, FIT_INFO_FILE, REFERENCES_FILE, load_references_bytes, \
    references_bytes
from inspectd.bundle.calibration import CalibrationConfig, calibrate_chain
from inspectd.data.images import read_image
from inspectd.data.mvtec import cut_tiles, load_defects, load_train, load_train_tiles, train_paths
from inspectd.errors import InspectdError
from inspectd.methods import create_method
from inspectd.refine.prior import PRIOR_FILE, PixelPrior


def peak_memory_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(n * fraction)) if n >= 5 else 0
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def fit_bundle(method_name: str, data: str | Path, out: str | Path, settings: dict | None = None,
               holdout: float = 0.2, seed: int = 0, progress: bool = True, train: np.ndarray | None = None,
               defects: str | Path | None = None, n_defects: int = 0,
               calibration: CalibrationConfig | None = None, tile: int | None = None,
               tiles_per_image: int = 4) -> dict:
    """Fit, calibrate and save a bundle; returns the fit summary (also saved as fit.json).

    `defects` is an MVTec-layout folder whose test/<type>/ images with ground_truth masks are
    labelled real defects; `n_defects` of them (a seeded pick, 0 = none) join the calibration,
    and the bundle records which, so `inspectd eval --deployed` leaves them out of the test.

    `tile` fits a native-resolution refiner: the method sees `tiles_per_image` random tile x tile
    crops of each normal image at its own resolution (image size = tile), the held-out images
    are split before cutting, and the calibration runs on crops of the held-out images (`train`
    given with `tile`: native images to cut the tiles from)."""
    if tile is not None:
        if defects and n_defects:
            raise InspectdError("--defects with --tile is not supported yet: labelled defects are read at the "
                                "bundle's size, not cut at native resolution; fit the tile bundle without them")
        settings = {**(settings or {}), "image_size": int(tile)}
    method = create_method(method_name, settings)
    size = method.config.image_size
    held_out_frames = None  # a tile bundle's held-out native images, each screened whole in windows
    if tile is not None:
        native = train
        train, owners = (cut_tiles(native, size, tiles_per_image, seed) if native is not None
                         else load_train_tiles(data, size, tiles_per_image, seed, progress))
        fit_images, hold_images = split_holdout(int(owners.max()) + 1, holdout, seed)
        fit_idx, hold_idx = np.nonzero(np.isin(owners, fit_images))[0], np.nonzero(np.isin(owners, hold_images))[0]
        held_out_frames = ((native[i] for i in hold_images) if native is not None
                           else (read_image(p) for p in np.asarray(train_paths(data))[hold_images]))
    else:
        if train is None:
            train = load_train(data, size, progress=progress)
        fit_idx, hold_idx = split_holdout(len(train), holdout, seed)
    if len(hold_idx) < 2:
        raise InspectdError(f"{data}: {len(train)} training images with --holdout {holdout} leave "
                            f"{len(hold_idx)} to calibrate on; need at least 2 (raise --holdout)")
    started = time.perf_counter()
    method.fit(train[fit_idx], progress=progress)
    fit_seconds = time.perf_counter() - started
    prior = PixelPrior.fit(train[fit_idx], seed=seed)
    references = references_bytes(train[fit_idx])
    labelled = load_defects(defects, size, n_defects, seed) if defects and n_defects else None
    config = calibration or CalibrationConfig(seed=seed)
    started = time.perf_counter()
    frame_scores = tiled_frame_scores(method, held_out_frames, int(tile)) if tile is not None else None
    chain = calibrate_chain(method, prior, train[fit_idx], train[hold_idx], load_references_bytes(references),
                            (labelled.images, labelled.masks) if labelled else None, config, progress,
                            frame_scores=frame_scores)
    chain["defects_used"] = [str(Path(p).resolve()) for p in labelled.paths] if labelled else []
    chain["tile"] = int(tile) if tile is not None else None
    calibration_seconds = time.perf_counter() - started
    # the method's own thresholds follow the chain, so every reader of the bundle agrees
    method.thresholds = {"pixel": chain["chain"]["pixel_threshold"], "image": chain["chain"]["screen_threshold"]}
    info = {"method": method_name, "data": str(data), "n_fit": int(len(fit_idx)), "n_holdout": int(len(hold_idx)),
            "fit_seconds": round(fit_seconds, 2), "calibration_seconds": round(calibration_seconds, 2),
            "peak_memory_gb": round(peak_memory_gb(), 3), "chain": chain["chain"],
            "defects_used": len(chain["defects_used"]), "seed": seed, "tile": chain["tile"],
            "f2pad_pick": chain["evidence"]["f2pad_pick"]}  # a near tie is worth a few labelled defects
    method.save(out, extra={PRIOR_FILE: prior.to_bytes(), FIT_INFO_FILE: json.dumps(info, indent=2).encode(),
                            REFERENCES_FILE: references,
                            CALIBRATION_FILE: json.dumps(chain, indent=2, default=float).encode()})
    return {"bundle": str(out), **info}


def tiled_frame_scores(method, frames, tile: int) -> np.ndarray:
    """A tile bundle's score of each held-out native frame screened whole in its windows, as a
    tiled screening (screening.tiles) or a tile refiner's frame sees it: the highest of a frame's
    many windows runs above one window's score, so its thresholds are set on these."""
    from inspectd.deploy.native import default_overlap, screen_in_tiles

    def screen(window: np.ndarray) -> tuple[np.ndarray, float]:
        maps, scores = method.predict(window[None])
        return maps[0], float(scores[0])

    return np.asarray([screen_in_tiles(screen, frame, tile, default_overlap(tile))[1] for frame in frames])
