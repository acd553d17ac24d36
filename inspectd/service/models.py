"""The real models behind the daemon: ONNX Runtime screening and the deployed chain's refiner.

`build_screener` and `build_refiner` turn settings into the plain callables the capture and
refiner loops take; both are called again on SIGHUP to reload the bundle. Both read their
thresholds and F2PAD settings from the bundle's calibration (deploy.ChainSettings), with the
line's YAML on top. On the demo line a missing bundle is fitted on defect-free parts first, so
the default configuration runs on a fresh machine.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from inspectd.bundle import export_to_bundle, load_calibration, load_normal_scores, load_tile
from inspectd.bundle.demo import fit_demo_bundle
from inspectd.deploy import ChainSettings, Inspector
from inspectd.deploy.native import NativeChain, checked_overlap, default_overlap, downscale, screen_in_tiles
from inspectd.errors import BundleError, InspectdError
from inspectd.methods import load_method
from inspectd.methods.base import read_bundle_config
from inspectd.methods.export import ONNX_FILE, OnnxScreener
from inspectd.service.capture_process import Screening
from inspectd.geometry import Box
from inspectd.service.refiner_process import RefinedFrame, Refinement
from inspectd.service.settings import Settings

log = logging.getLogger(__name__)


def ensure_demo_bundle(settings: Settings, bundle: Path) -> None:
    """Fit and export the demo line's model when the configured bundle does not exist yet."""
    demo = settings.capture.demo
    fit_demo_bundle(bundle, demo.texture, settings.capture.size, seed=demo.seed)


def resolve_bundle(settings: Settings, path: Path | None, role: str) -> Path:
    if path is None:
        raise InspectdError(f"settings: {role}.model is not set (a bundle directory from `inspectd fit`)")
    bundle = Path(path)
    if not (bundle / "manifest.json").is_file() and demo_asked_for(settings):
        ensure_demo_bundle(settings, bundle)
    if not (bundle / "manifest.json").is_file():
        raise BundleError(f"{bundle}: {role} model bundle not found (run `inspectd fit ... --out {bundle}`; a demo "
                          "model is fitted there only when the settings say capture.source: demo)")
    return bundle


def demo_asked_for(settings: Settings) -> bool:
    """The settings name the demo source themselves: a default (e.g. a refiner's file without a
    capture section) never makes a typo in a model path fit and serve a demo model there."""
    return settings.capture.source == "demo" and "source" in settings.capture.model_fields_set


def loaded(bundle: Path, role: str, load):
    """`load()`, with any failure of a bundle's files (a corrupt ONNX graph, weights, calibration)
    turned into one BundleError line naming the bundle: refused at start, the old model kept on SIGHUP."""
    try:
        return load()
    except InspectdError as exc:
        if "\n" not in str(exc):
            raise
        raise BundleError(" ".join(str(exc).split())[:500]) from None  # e.g. torch.load's many-line message
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise BundleError(f"{bundle}: cannot load the {role} model ({type(exc).__name__}: {detail})") from None


def screening_chain(settings: Settings, bundle: Path) -> ChainSettings:
    """The chain's settings as the capture uses them: the bundle's, with the line's threshold."""
    _, cfg = read_bundle_config(bundle)
    chain = ChainSettings.from_calibration(load_calibration(bundle), cfg.get("thresholds", {}))
    return chain.override(screen_threshold=settings.screening.threshold)


def build_screener(settings: Settings) -> Screening:
    bundle = resolve_bundle(settings, settings.screening.model, "screening")
    return loaded(bundle, "screening", lambda: load_screener(settings, bundle))


def load_screener(settings: Settings, bundle: Path) -> Screening:
    if not (bundle / ONNX_FILE).is_file():
        export_to_bundle(load_method(bundle), bundle)
    screener = OnnxScreener(bundle, device=settings.screening.device)
    chain = screening_chain(settings, bundle)
    tile = screening_tile(settings, bundle)
    if tile:
        overlap = default_overlap(tile) if settings.screening.tile_overlap is None else settings.screening.tile_overlap
        checked_overlap(tile, overlap)  # a bad overlap stops the start, naming itself

        def screen(frame: np.ndarray) -> tuple[np.ndarray, float]:
            return screen_in_tiles(screener, frame, tile, overlap)
    else:
        def screen(frame: np.ndarray) -> tuple[np.ndarray, float]:
            return screener(downscale(frame, screener.size))  # native frames are screened downscaled

    log.info("screening with %s on %s %s, threshold %.4f", bundle.name, screener.provider,
             f"in native windows of {tile} px" if tile else f"at {screener.size} px", chain.frame_threshold(bool(tile)))
    return Screening(screen=screen, threshold=chain.frame_threshold(tiled=bool(tile)), model_id=screener.model_id,
                     chain=chain,
                     normal_scores=load_normal_scores(bundle), image_size=None if tile else screener.size,
                     crop_tile=crop_tile_for(settings), native=bool(tile))


def screening_tile(settings: Settings, bundle: Path) -> int | None:
    """The window size of a tiled screening (screening.tiles), checked against the bundle: a tile
    bundle only sees T x T native crops, a whole-frame bundle only whole frames."""
    tile = load_tile(bundle)
    if settings.screening.tiles and not tile:
        raise BundleError(f"screening.tiles is on, but the screening bundle {bundle} is a whole-frame bundle: "
                          "tiled screening needs a tile bundle (`inspectd fit --tile SIZE`), or set "
                          "screening.tiles: false")
    if tile and not settings.screening.tiles:
        raise BundleError(f"the screening bundle {bundle} is a tile bundle (fitted on {tile} px native crops): "
                          "it cannot screen whole frames; set screening.tiles: true to screen in windows of it")
    return tile


def crop_tile_for(settings: Settings) -> int | None:
    """transport.frame_payload "crops": the refiner bundle's tile, whose windows decide which
    pixels a flagged frame's message carries. A whole-frame refiner reads the whole frame."""
    if settings.transport.frame_payload != "crops":
        return None
    bundle = resolve_bundle(settings, settings.refiner.model, "refiner")
    tile = load_tile(bundle)
    if not tile:
        raise BundleError(f"transport.frame_payload is 'crops', but the refiner bundle {bundle} is a whole-frame "
                          "bundle: it reads the whole frame (use a tile bundle, `inspectd fit --tile`, or "
                          "transport.frame_payload: frame)")
    return tile


def build_refiner(settings: Settings) -> Refinement:
    """The deployed chain for flagged frames of any size: a whole-frame bundle refines the frame
    downscaled to its size (mask upsampled), a tile bundle (`fit --tile`) native crops around
    the regions the capture flagged (the whole frame when a frame carries none)."""
    bundle = resolve_bundle(settings, settings.refiner.model, "refiner")
    return loaded(bundle, "refiner", lambda: load_refiner(settings, bundle))


def load_refiner(settings: Settings, bundle: Path) -> Refinement:
    inspector = Inspector.from_bundle(bundle, device=settings.refiner.device,
                                      screen_threshold=settings.screening.threshold,
                                      min_defect_area_px=settings.refiner.min_area_px, f2pad=settings.refiner.f2pad)
    tile = load_tile(bundle)
    chain = NativeChain(inspector, tile=tile, whole_frame=settings.refiner.whole_frame)

    def refine_frame(image: np.ndarray, header: dict) -> RefinedFrame:
        regions = header.get("regions") or [Box(0, 0, image.shape[1], image.shape[0])]
        px_per_mm = header.get("px_per_mm") or settings.px_per_mm
        run = chain.refine(image, regions, score=header.get("score"), px_per_mm=px_per_mm)
        stats = {"seconds": run.refine_seconds, "iterations": run.iterations, "device": inspector.device.type,
                 "windows": len(run.windows)}
        return RefinedFrame(run.decision, run.defects, run.mask, stats)

    scale = f"native crops of {tile} px" if tile else f"frames at {inspector.image_size} px ({chain.whole_frame})"
    log.info("refining with %s (F2PAD, %s) on %s: %s", bundle.name, scale, inspector.device, inspector.settings)
    return Refinement(refine=refine_frame, model_id=inspector.model_id, image_size=None,
                      min_area_px=inspector.settings.min_defect_area_px)
