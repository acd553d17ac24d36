"""The real models behind the daemon: ONNX Runtime screening and the F2PAD refiner.

`build_screener` and `build_refiner` turn settings into the plain callables the capture and
refiner loops take; both are called again on SIGHUP to reload the bundle. On the demo line a
missing bundle is fitted on defect-free parts and exported first, so the default
configuration runs on a fresh machine.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch

from inspectd.errors import BundleError, InspectdError
from inspectd.methods import load_method
from inspectd.methods.export import ONNX_FILE, OnnxScreener, export_to_bundle
from inspectd.service.capture_process import Screening
from inspectd.service.refiner_process import Refinement
from inspectd.service.settings import Settings

log = logging.getLogger(__name__)
_demo_lock = threading.Lock()  # `inspectd run` builds both sides in one process


def ensure_demo_bundle(settings: Settings, bundle: Path) -> None:
    """Fit and export the demo line's model when the configured bundle does not exist yet."""
    from inspectd.data.textures import texture_parts
    from inspectd.eval.calibrate import fit_and_calibrate

    with _demo_lock:
        if (bundle / ONNX_FILE).is_file():
            return
        demo = settings.capture.demo
        size = settings.capture.size
        log.info("demo line: fitting %s on defect-free %s parts (first run only)", bundle, demo.texture)
        normals = texture_parts(demo.texture, 40, size, seed=demo.seed + 7)
        fit_and_calibrate("patchcore", f"<{demo.texture} parts>", bundle, {"image_size": size}, holdout=0.2,
                          seed=demo.seed, progress=False, train=normals)
        export_to_bundle(load_method(bundle), bundle)


def resolve_bundle(settings: Settings, path: Path | None, role: str) -> Path:
    if path is None:
        raise InspectdError(f"settings: {role}.model is not set (a bundle directory from `inspectd fit`)")
    bundle = Path(path)
    if not (bundle / "manifest.json").is_file() and settings.capture.source == "demo":
        ensure_demo_bundle(settings, bundle)
    if not (bundle / "manifest.json").is_file():
        raise BundleError(f"{bundle}: {role} model bundle not found (run `inspectd fit ... --out {bundle}`)")
    return bundle


def build_screener(settings: Settings) -> Screening:
    bundle = resolve_bundle(settings, settings.screening.model, "screening")
    if not (bundle / ONNX_FILE).is_file():
        export_to_bundle(load_method(bundle), bundle)
    screener = OnnxScreener(bundle, device=settings.screening.device)
    threshold = settings.screening.threshold
    if threshold is None:
        threshold = screener.thresholds.get("image")
    if threshold is None:
        raise InspectdError(f"{bundle}: no calibrated image threshold; set screening.threshold")
    log.info("screening with %s on %s, threshold %.4f", bundle.name, screener.provider, threshold)
    return Screening(screen=screener, threshold=float(threshold), model_id=screener.model_id)


def build_refiner(settings: Settings) -> Refinement:
    from inspectd.eval.calibrate import load_prior, load_references
    from inspectd.refine import F2PADSettings, refine

    bundle = resolve_bundle(settings, settings.refiner.model, "refiner")
    method = load_method(bundle)
    prior = load_prior(bundle)
    f2pad = F2PADSettings.from_dict({**settings.refiner.f2pad, "device": settings.refiner.device})
    references = load_references(bundle)
    if f2pad.inpaint == "nearest" and references is None:
        raise InspectdError(f"{bundle}: refiner.f2pad.inpaint=nearest needs the bundle's reference images "
                            "(references.npz, written by `inspectd fit`); refit, or use telea")
    device = torch.device("cuda" if settings.refiner.device != "cpu" and torch.cuda.is_available() else "cpu")
    pixel_threshold = method.thresholds.get("pixel", float("inf"))
    image_threshold = settings.screening.threshold or method.thresholds.get("image", pixel_threshold)
    method.to(device)

    def refine_frame(image: np.ndarray, header: dict) -> tuple[np.ndarray, np.ndarray, dict]:
        # the coarse map is recomputed here: only its summary travels with the frame
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None]
            coarse = method.anomaly_map(x)[0].cpu().numpy()
        # Screening flagged this frame because its map peak passed the image threshold; if no
        # pixel passes the (separately calibrated) pixel threshold, start from the image one.
        threshold = pixel_threshold if coarse.max() > pixel_threshold else min(pixel_threshold, image_threshold)
        result = refine(image, method, coarse, prior, f2pad.replace(threshold=threshold), references)
        stats = {"seconds": result.stats["seconds"], "iterations": result.stats["iterations"], "device": str(device)}
        return result.mask, coarse, stats

    size = method.config.image_size
    log.info("refining with %s (F2PAD) on %s", bundle.name, device)
    return Refinement(refine=refine_frame, model_id=getattr(method, "model_id", bundle.name), image_size=(size, size))
