"""The daemon's subcommands, for `inspectd/cli.py` to mount:

    add_service_commands(sub, build_screener, build_refiner)

adds `capture`, `refine`, `run` (both on one box, printing results), `watch`, `keys`, `drift`,
`bridge mqtt` and `view` (the last two subscribe to the results like `watch`).
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

from inspectd.data.images import list_images, read_image
from inspectd.deploy.drift import DriftReading, drift_statistic, format_reading
from inspectd.errors import BadImageError, InspectdError
from inspectd.service.capture import open_source
from inspectd.service.capture_process import Screening, run_capture
from inspectd.service.lifecycle import signal_handlers
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.pacing import LineMeasure, describe, hold_while_backlogged, measure_line, paced_fps, \
    running_refine_seconds
from inspectd.service.refiner_process import Refinement, run_refiner
from inspectd.service.settings import DEFAULT_SETTINGS_FILE, DriftSettings, Settings, load_settings
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

    p = sub.add_parser("drift", help="screening scores of a folder of recent frames vs the bundle's normal scores "
                                      "(KS statistic, as the capture's drift monitor)")
    p.add_argument("--model", required=True, help="bundle directory")
    p.add_argument("--data", required=True, help="folder of recent frames (images)")
    p.add_argument("--threshold", type=float, default=DriftSettings().threshold,
                   help="KS statistic above which it says DRIFT (default: drift.threshold's default)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=lambda args: cmd_drift(args, build_screener))

    p = sub.add_parser("bridge", help="republish the results to a plant system")
    targets = p.add_subparsers(dest="target", required=True)
    p = targets.add_parser("mqtt", help="every result to an MQTT broker (settings: mqtt.*; topics in docs/messages.md)")
    settings_arg(p)
    p.set_defaults(func=cmd_bridge_mqtt)

    p = sub.add_parser("view", help="live web page of the results (settings: view.*; 127.0.0.1:8090 by default)")
    settings_arg(p)
    p.set_defaults(func=cmd_view)

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
                          model_id=screening.model_id, normal_scores=screening.normal_scores,
                          reload=lambda: build_screener(settings_for(args)), chain=screening.chain,
                          image_size=screening.image_size, crop_tile=screening.crop_tile,
                          native=screening.native)
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
    view_stop = start_view(settings, out) if settings.view.in_run else None
    ready.wait(10)
    frames = paced_demo_line(settings, screening, refinement, metrics, stop, out) \
        if settings.capture.source == "demo" and settings.capture.demo.pace_to_refiner else None
    summary = run_capture(settings, screening.screen, stop, threshold=screening.threshold,
                          model_id=screening.model_id, normal_scores=screening.normal_scores, metrics=metrics,
                          frames=frames, reload=lambda: build_screener(settings_for(args)), chain=screening.chain,
                          image_size=screening.image_size, crop_tile=screening.crop_tile,
                          native=screening.native)
    # each result is published before capture sees it as an ack; give the printer a moment for the last
    deadline = time.monotonic() + 5
    while printer.is_alive() and len(printed) < summary["spooled"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    if view_stop is not None:
        view_stop.set()
    refiner.join(timeout=30)
    summary["results"] = len(printed)
    out(f"run: {summary}")
    return summary


def start_view(settings: Settings, out) -> threading.Event:
    """The live view beside `inspectd run`, on its own stop event: a view that cannot start (its
    port taken) logs why and leaves the line running. Waits until it is ready (or has failed), so
    the page sees the line's first results."""
    from inspectd.service.view import run_view

    stop, ready = threading.Event(), threading.Event()
    view_settings = settings.model_copy(update={"metrics": settings.metrics.model_copy(update={"port": None})})
    def serve() -> None:
        try:
            run_view(view_settings, stop, ServiceMetrics("view"), ready=ready,
                     on_url=lambda url: out(f"view: {url} (live results in a browser)"))
        except InspectdError as exc:
            log.error("%s; the line runs without it", exc)

    view = threading.Thread(target=serve, name="view", daemon=True)
    view.start()
    deadline = time.monotonic() + 10
    while not ready.wait(0.05) and view.is_alive() and time.monotonic() < deadline:
        pass
    return stop
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


def cmd_drift(args, build_screener: BuildScreener, out=print) -> DriftReading:
    folder = Path(args.data)
    if not folder.is_dir():
        raise InspectdError(f"--data {folder}: not a folder of images")
    # a folder source, so that a missing bundle is an error here, never a demo fit
    settings = Settings(screening={"model": args.model, "device": args.device},
                        capture={"source": "folder", "uri": str(folder)})
    screening = build_screener(settings)
    if screening.normal_scores is None:
        raise InspectdError(f"{args.model}: the bundle has no held-out normal scores (fitted before inspectd saved "
                            "them); refit it with `inspectd fit` to measure drift")
    scores = screen_folder(folder, screening)
    reading = drift_statistic(scores, screening.normal_scores, screening.threshold)
    out(f"{folder} against {screening.model_id}: {format_reading(reading, args.threshold)}")
    return reading


def screen_folder(folder: Path, screening: Screening) -> list[float]:
    """Screening scores of every readable image in `folder`; unreadable ones are named and skipped."""
    scores = []
    for path in list_images(folder):
        try:
            image = read_image(path, screening.image_size)
        except BadImageError as exc:
            log.warning("skipping %s", exc)
            continue
        scores.append(float(screening.screen(image)[1]))
    if not scores:
        raise InspectdError(f"--data {folder}: no readable image")
    return scores


def cmd_bridge_mqtt(args) -> None:
    from inspectd.service.mqtt_bridge import run_bridge  # paho is only needed here

    settings = load_settings(args.settings)
    stop = threading.Event()
    with signal_handlers(stop):
        summary = run_bridge(settings, stop)
    print(f"bridge mqtt: {summary}")


def cmd_view(args) -> None:
    from inspectd.service.view import run_view  # starlette and uvicorn are only needed here

    run_view(load_settings(args.settings), threading.Event(), on_url=lambda url: print(f"view: {url}", flush=True))


def cmd_keys(args) -> None:
    for name in args.names:
        public, secret = make_keypair(Path(args.dir), name)
        print(f"{name}: public {public} (copy into the authorized_clients folder of the servers it connects to), "
              f"secret {secret} (keep it; transport.curve.secret_key)")
