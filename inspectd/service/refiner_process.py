"""The refiner process: PULL flagged frames -> validate -> refine -> measure -> PUB the result.

The refinement model arrives as a plain callable `refine(image, header)` that returns either a
RefinedFrame (the deployed chain: decision, defects and mask crops in the frame's own pixels,
already judged) or `(bool mask, score_map, stats)` at the frame's size, judged here; stats
with `iterations` (and optionally `seconds`, `device`). A bad message is counted by kind and
skipped; a refinement that raises is tried again up to refiner.max_attempts times, then
published with decision "error" and its reason (capture moves that frame to its dead-letter
folder instead of resending it); anything else that fails on one message is logged, counted
(inspectd_loop_errors_total) and skipped. Only stop_event ends the loop, or the heartbeat
thread dying (ThreadDied: the process exits non-zero, so systemd restarts it).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import zmq

from inspectd.errors import InspectdError
from inspectd.deploy.inspector import MIN_DEFECT_AREA_PX, judge
from inspectd.geometry import Box, CroppedMask
from inspectd.service.heartbeat import HeartbeatSender, LockedSocket, refiner_identity
from inspectd.service.lifecycle import check_alive, reload_model, signal_handlers
from inspectd.service.messages import MESSAGE_ERROR_KINDS, MessageError, encode_result, parse_frame
from inspectd.service.preview import Preview, make_preview
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.sdnotify import Notifier
from inspectd.service.settings import Settings
from inspectd.service.transport import Reconnector, Transport, recv_multipart_nowait

log = logging.getLogger(__name__)
@dataclass
class RefinedFrame:
    """A frame the chain has judged: defects and mask crops in the frame's own pixels."""

    decision: str
    defects: list[dict]
    mask: CroppedMask
    stats: dict


RefineFn = Callable[[np.ndarray, dict], "RefinedFrame | tuple[np.ndarray, np.ndarray, dict]"]
RECENT_RESULTS = 64  # results kept to answer a resent frame without refining it again


@dataclass
class Refinement:
    """What a reload returns: the callable, its model id and the frame size it needs."""

    refine: RefineFn
    model_id: str = "unknown"
    image_size: tuple[int, int] | None = None  # (H, W); other sizes are rejected as wrong_size
    min_area_px: int | None = None  # the chain's smallest defect (None: settings.refiner.min_area_px)


class RefinerLoop:
    def __init__(self, settings: Settings, refinement: Refinement, metrics: ServiceMetrics, pub: zmq.Socket,
                 heartbeat: HeartbeatSender | None = None):
        self.settings, self.refinement, self.metrics, self.pub = settings, refinement, metrics, pub
        self.heartbeat = heartbeat
        # keyed by (frame_id, ack_token): a frame sent under another frame's id never gets its answer
        self.recent: collections.OrderedDict[tuple[str, str], list[bytes]] = collections.OrderedDict()
        self.counts = {"received": 0, "published": 0, "bad": 0, "repeats": 0, "errors": 0}

    def handle(self, parts: list[bytes]) -> dict | None:
        """One message in; the published result, or None. Never raises: one message cannot end the loop."""
        self.counts["received"] += 1
        try:
            return self.handle_message(parts)
        except Exception as exc:  # whatever it was, the next message gets a working refiner
            log.exception("refiner loop: a message failed and is skipped: %s", exc)
            self.metrics.loop_errors.labels("refiner").inc()
            self.counts["errors"] += 1
            return None
        finally:
            if self.heartbeat is not None:
                self.heartbeat.busy(None)

    def handle_message(self, parts: list[bytes]) -> dict | None:
        try:
            header, image = parse_frame(parts, self.settings.transport.max_message_bytes,
                                        self.refinement.image_size, self.settings.transport.max_frame_pixels)
        except MessageError as exc:
            log.warning("rejected frame message: %s", exc)
            self.metrics.bad_inputs.labels(exc.kind).inc()
            self.counts["bad"] += 1
            return None
        key = (header["frame_id"], header.get("ack_token", ""))
        if key in self.recent:  # a resend whose first result was missed
            self.pub.send_multipart(self.recent[key])
            self.counts["repeats"] += 1
            return None
        if self.heartbeat is not None:
            self.heartbeat.busy(header["frame_id"])  # if this frame kills us, capture learns which one
        try:
            result, mask = self.refine(header, image)
            self.publish(result, mask, self.preview(header, image, mask))
        except Exception as exc:  # e.g. a result that cannot be encoded: still answer, with the reason
            log.error("frame %s: no result could be published (%s); publishing an error result",
                      header["frame_id"], exc)
            result = self.error_result(header, f"result not publishable: {exc}")
            self.publish(result, CroppedMask(*image.shape[:2], []))
        return result

    def refine(self, header: dict, image: np.ndarray) -> tuple[dict, CroppedMask]:
        """Refine and judge, up to refiner.max_attempts times; an error result when every attempt failed."""
        attempts = self.settings.refiner.max_attempts
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                refined = self.judged(self.refinement.refine(image, header), header, image.shape[:2])
                break
            except Exception as exc:  # a model failure on one frame is reported, not fatal
                log.error("refining frame %s failed (attempt %d of %d): %s", header["frame_id"], attempt,
                          attempts, exc)
                self.metrics.refinement_failures.inc()
                error = f"refinement failed {attempts} time(s): {exc}"
        else:
            return self.error_result(header, error), CroppedMask(*image.shape[:2], [])
        seconds = time.perf_counter() - started
        self.metrics.refinement_latency.observe(seconds)
        stats = refined.stats
        result = self.base_result(header, refined.decision, refined.defects)
        result["refinement"] = {"seconds": round(float(stats.get("seconds", seconds)), 4),
                                "iterations": int(stats.get("iterations", 0)), "device": str(stats.get("device", ""))}
        return result, refined.mask

    def base_result(self, header: dict, decision: str, defects: list) -> dict:
        result = {
            "frame_id": header["frame_id"], "camera": header["camera"],
            "timestamps": {"captured": header["captured_at"], "screened": header["screened_at"],
                           "refined": time.time()},
            "image_score": header["score"], "decision": decision, "defects": defects,
            "refinement": {"seconds": 0.0, "iterations": 0, "device": ""},
            "model_id": self.refinement.model_id, "screening_model_id": header["model_id"],
        }
        if "ack_token" in header:
            result["ack_token"] = header["ack_token"]  # proves to the capture that this refiner holds the frame
        return result

    def error_result(self, header: dict, error: str) -> dict:
        result = self.base_result(header, "error", [])
        result["error"] = error[:500]
        return result

    def preview(self, header: dict, image: np.ndarray, mask: CroppedMask) -> Preview | None:
        """The picture for people (refiner.preview), or None; a picture never costs the result."""
        wanted = self.settings.refiner.preview
        if wanted.kind == "off":
            return None
        try:
            picture = make_preview(image, wanted.kind, [box for box, _ in mask.crops], wanted.max_side,
                                   wanted.max_bytes)
        except Exception as exc:  # noqa: BLE001 - the result goes out without its picture
            log.warning("frame %s: no preview (%s)", header["frame_id"], exc)
            return None
        if picture is None and (wanted.kind == "frame" or mask.crops):
            log.warning("frame %s: the preview does not fit in refiner.preview.max_bytes=%d; sent without it",
                        header["frame_id"], wanted.max_bytes)
        return picture

    def publish(self, result: dict, mask: CroppedMask, preview: Preview | None = None) -> None:
        result["timestamps"]["published"] = time.time()
        parts = encode_result(result, mask, preview)
        self.pub.send_multipart(parts)
        self.recent[(result["frame_id"], result.get("ack_token", ""))] = parts
        if len(self.recent) > RECENT_RESULTS:
            self.recent.popitem(last=False)
        self.counts["published"] += 1
        m = self.metrics
        m.frames_refined.labels(result["camera"]).inc()
        m.results_published.labels(result["decision"]).inc()
        m.defects_published.labels(result["camera"]).inc(len(result["defects"]))

    def judged(self, output, header: dict, shape: tuple[int, int]) -> RefinedFrame:
        """A refine callable's output as a judged frame (a plain mask is judged here)."""
        if isinstance(output, RefinedFrame):
            if (output.mask.height, output.mask.width) != shape:
                raise InspectdError(f"refine returned a mask of {output.mask.width}x{output.mask.height} "
                                    f"for a {shape[1]}x{shape[0]} frame")
            return output
        mask, score_map, stats = output
        mask, score_map = check_outputs(mask, score_map, shape)
        px_per_mm = header.get("px_per_mm") or self.settings.px_per_mm
        min_area = self.refinement.min_area_px or self.settings.refiner.min_area_px or MIN_DEFECT_AREA_PX
        decision, defects, mask = judge(mask, score_map, min_area, px_per_mm)
        return RefinedFrame(decision, defects, CroppedMask.from_full(mask, [Box(*d["bbox"]) for d in defects]), stats)


def check_outputs(mask, score_map, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    mask, score_map = np.asarray(mask, bool), np.asarray(score_map, np.float32)
    if mask.shape != shape or score_map.shape != shape:
        raise InspectdError(f"refine returned mask {mask.shape} and score map {score_map.shape}, expected {shape}")
    if not np.isfinite(score_map).all():  # the defects' scores would be NaN/inf: unpublishable JSON
        raise InspectdError("refine returned a score map whose values are not finite")
    return mask, score_map


def run_refiner(settings: Settings, refine: RefineFn, stop_event: threading.Event, *, model_id: str = "unknown",
                image_size: tuple[int, int] | None = None, min_area_px: int | None = None,
                reload: Callable[[], Refinement] | None = None,
                reload_event: threading.Event | None = None, metrics: ServiceMetrics | None = None,
                notifier: Notifier | None = None) -> dict:
    """Serve until stop_event (SIGTERM/SIGINT in the main thread); returns counts."""
    reload_event = reload_event or threading.Event()
    metrics = metrics or ServiceMetrics("refiner")
    notifier = notifier or Notifier()
    metrics.init_series(None, (), MESSAGE_ERROR_KINDS)
    metrics.set_model(model_id)
    transport = Transport(settings.transport)
    try:
        pub = transport.results_pub()
    except BaseException:  # e.g. the port is taken: release the context and the authenticator thread
        transport.close()
        raise
    # take frames only once subscribers had time to (re)connect, or their results would be lost
    stop_event.wait(settings.transport.pub_grace_s)
    pull = transport.frames_pull()
    failures = metrics.handshake_failures
    reconnector = Reconnector(pull, settings.transport.handshake_backoff_max_s,
                              lambda endpoint: failures.labels("frames_pull").inc())
    pub_monitor = Reconnector(pub, on_handshake_failure=lambda endpoint: failures.labels("results_pub").inc(),
                              reconnect=False)
    pub = LockedSocket(pub)  # the heartbeat thread publishes on it too
    heartbeat = None
    if settings.transport.heartbeat_s:
        heartbeat = HeartbeatSender(pub, refiner_identity(settings.transport.results_bind),
                                    settings.transport.heartbeat_s)
        heartbeat.start()
    loop = RefinerLoop(settings, Refinement(refine, model_id, image_size, min_area_px), metrics, pub, heartbeat)
    serving = settings.metrics.port is not None  # else the caller serves (or not) its metrics
    if serving:
        metrics.serve(settings.metrics.host, settings.metrics.port)
    metrics.up.labels("refiner").set(1)
    interval, last_ping = notifier.watchdog_interval(), 0.0
    notifier.ready(f"refining with {model_id}")
    log.info("refiner: model %s, pulling from %s, publishing on %s", model_id,
             ", ".join(settings.transport.frames_connect), settings.transport.results_bind)
    try:
        with signal_handlers(stop_event, reload_event):
            while not stop_event.is_set():
                check_alive(heartbeat, metrics, "refiner")
                if interval and time.monotonic() - last_ping >= interval:
                    notifier.watchdog()
                    last_ping = time.monotonic()
                if reload_event.is_set():
                    reload_event.clear()
                    loop.refinement = reload_model(loop.refinement, reload, metrics, notifier)
                if pull.poll(200, zmq.POLLIN) and (parts := recv_multipart_nowait(pull)) is not None:
                    loop.handle(parts)
                metrics.reconnects.inc(len(reconnector.check()))
                pub_monitor.check()
    finally:
        notifier.stopping()
        if heartbeat is not None and heartbeat.is_alive():
            heartbeat.stop()
        reconnector.close()
        with pub.lock:
            pub_monitor.close()
        transport.close()
        metrics.up.labels("refiner").set(0)
        if serving:
            metrics.stop()
        log.info("refiner stopped: %s", loop.counts)
    return loop.counts


