"""The daemon's subcommands, for `inspectd/cli.py` to mount:

    add_service_commands(sub, build_screener, build_refiner)

adds `capture`, `refine`, `run` (both on one box, printing results), `watch` and `keys`.
The model builders come from the caller, so this layer knows nothing about ONNX or F2PAD:
`build_screener(settings) -> Screening` and `build_refiner(settings) -> Refinement`; they are
called again on SIGHUP (with the settings file re-read) to reload the model.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from inspectd.service.capture import open_source
from inspectd.service.capture_process import Screening, run_capture
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.pacing import LineMeasure, describe, hold_while_backlogged, measure_line, paced_fps, \
    running_refine_seconds
from inspectd.service.refiner_process import Refinement, run_refiner
from inspectd.service.settings import DEFAULT_SETTINGS_FILE, Settings, load_settings
from inspectd.service.transport import make_keypair
from inspectd.service.watch import printable, results, watch

log = logging.getLogger(__name__)
BuildScreener = Callable[[Settings], Screening]
BuildRefiner = Callable[[Settings], Refinement]


def add_service_commands(sub, build_screener: BuildScreener, build_refiner: BuildRefiner) -> None:
    def settings_arg(p):
        p.add_argument("--settings", default=str(DEFAULT_SETTINGS_FILE),
                       help="YAML settings file (default configs/demo.yaml); INSPECTD_* variables override it")

    p = sub.add_parser("capture", help="read a camera, screen every frame, send flagged frames to the refiners")
    settings_arg(p)
    p.add_argument("--frames", type=int, help="stop after this many frames (default: run until stopped)")
    p.set_defaults(func=lambda args: cmd_capture(args, build_screener))

    p = sub.add_parser("refine", help="refinement worker: refine flagged frames, publish masks and geometry")
    settings_arg(p)
    p.set_defaults(func=lambda args: cmd_refine(args, build_refiner))

    p = sub.add_parser("run", help="capture + refiner on one box, printing each published defect")
    settings_arg(p)
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument("--count", type=int, help="stop after this many published results")
    p.set_defaults(func=lambda args: cmd_run(args, build_screener, build_refiner))

    p = sub.add_parser("watch", help="subscribe to published results and print one line per defect")
    settings_arg(p)
    p.add_argument("--camera", help="only this camera (default: all)")
    p.add_argument("--count", type=int, help="stop after this many results")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("keys", help="make CURVE key pairs (NAME.key to share, NAME.key_secret to keep)")
    p.add_argument("--dir", required=True, help="folder for the certificate files")
    p.add_argument("names", nargs="+", help="e.g. capture refiner operator")
    p.set_defaults(func=cmd_keys)


def settings_for(args) -> Settings:
    settings = load_settings(args.settings)
    if getattr(args, "frames", None) is not None:
        settings.capture.max_frames = args.frames
    return settings


def cmd_capture(args, build_screener: BuildScreener) -> None:
    settings = settings_for(args)
    screening = build_screener(settings)
    summary = run_capture(settings, screening.screen, threading.Event(), threshold=screening.threshold,
                          model_id=screening.model_id, reload=lambda: build_screener(settings_for(args)),
                          chain=screening.chain)
    print(f"capture: {summary}")


def cmd_refine(args, build_refiner: BuildRefiner) -> None:
    settings = settings_for(args)
    refinement = build_refiner(settings)
    summary = run_refiner(settings, refinement.refine, threading.Event(), model_id=refinement.model_id,
                          image_size=refinement.image_size, min_area_px=refinement.min_area_px,
                          reload=lambda: build_refiner(settings_for(args)))
    print(f"refine: {summary}")


def cmd_run(args, build_screener: BuildScreener, build_refiner: BuildRefiner, out=print) -> dict:
    """Both processes' loops in one process; one /metrics endpoint (the capture's port) for both."""
    settings = settings_for(args)
    screening, refinement = build_screener(settings), build_refiner(settings)
    stop, metrics = threading.Event(), ServiceMetrics("run")
    refiner_settings = settings.model_copy(update={"metrics": settings.metrics.model_copy(update={"port": None})})
    refiner = threading.Thread(target=run_refiner, name="refiner", daemon=True,
                               args=(refiner_settings, refinement.refine, stop),
                               kwargs={"model_id": refinement.model_id, "image_size": refinement.image_size,
                                       "min_area_px": refinement.min_area_px, "metrics": metrics})
    refiner.start()
    printed, ready = [], threading.Event()
    printer = threading.Thread(target=print_results, name="watch", daemon=True,
                               args=(settings, stop, ready, printed, args.count, out))
    printer.start()
    ready.wait(10)
    frames = paced_demo_line(settings, screening, refinement, metrics, stop, out) \
        if settings.capture.source == "demo" and settings.capture.demo.pace_to_refiner else None
    summary = run_capture(settings, screening.screen, stop, threshold=screening.threshold,
                          model_id=screening.model_id, metrics=metrics, frames=frames,
                          reload=lambda: build_screener(settings_for(args)), chain=screening.chain)
    # each result is published before capture sees it as an ack; give the printer a moment for the last
    deadline = time.monotonic() + 5
    while printer.is_alive() and len(printed) < summary["spooled"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    refiner.join(timeout=30)
    summary["results"] = len(printed)
    out(f"run: {summary}")
    return summary


def paced_demo_line(settings: Settings, screening: Screening, refinement: Refinement, metrics: ServiceMetrics,
                    stop: threading.Event, out) -> Iterator:
    """The demo source at the rate its refiner can take (measured now, then its running mean),
    held while frames wait. Takes over the pacing from run_capture (settings.capture.fps = 0)."""
    measure = measure_line(settings, screening, refinement)
    configured_fps, flag_rate = settings.capture.fps, measure.flag_rate
    out(describe(measure, configured_fps, paced_fps(configured_fps, measure)))
    settings.capture.fps = 0
    refine_seconds = running_refine_seconds(metrics, measure.refine_seconds)

    def period() -> float:
        fps = paced_fps(configured_fps, LineMeasure(refine_seconds(), flag_rate))
        return 1.0 / fps if fps > 0 else 0.0

    source = open_source(settings.capture, settings.camera_id, stop,
                         lambda reason: metrics.source_errors.labels(reason).inc())
    return hold_while_backlogged(source, lambda: metrics.registry.get_sample_value("inspectd_spool_frames") or 0,
                                 stop, period=period)


def print_results(settings: Settings, stop: threading.Event, ready: threading.Event, printed: list,
                  count: int | None, out) -> None:
    for result, _mask in results(settings, stop, settings.camera_id, ready=ready):
        for line in printable(result) or [f"{result['frame_id']}: result not printable (see the log)"]:
            out(line)
        printed.append(result["frame_id"])
        if count is not None and len(printed) >= count:
            stop.set()


def cmd_watch(args) -> None:
    settings = load_settings(args.settings)
    bad = collections.Counter()
    watch(settings, threading.Event(), args.camera, args.count, args.timeout, bad=bad)
    if bad:
        print(f"watch: ignored {sum(bad.values())} bad result message(s): {dict(bad)}")


def cmd_keys(args) -> None:
    for name in args.names:
        public, secret = make_keypair(Path(args.dir), name)
        print(f"{name}: public {public} (copy into the authorized_clients folder of the servers it connects to), "
              f"secret {secret} (keep it; transport.curve.secret_key)")
