"""The capture process: source -> screen every frame -> spool + PUSH the flagged ones.

Two threads. The main loop reads frames, screens them, decides with the threshold and writes
flagged frames to the spool (durable before anything is sent). The sender thread owns the zmq
sockets: it sends whatever the spool says is due (new frames, and unacked ones after
ack_timeout_s), and it removes a frame from the spool when its result appears on a refiner's
PUB socket (the ack). A refiner that dies mid-frame therefore costs a resend, never a frame.

The screening model arrives as a plain callable `screen(image) -> (score_map, score)`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import zmq

from inspectd.deploy.drift import DriftMonitor
from inspectd.errors import ConfigError
from inspectd.service.capture import Frame, open_source, paced
from inspectd.service.lifecycle import reload_model, signal_handlers
from inspectd.service.messages import MESSAGE_ERROR_KINDS, MessageError, encode_frame, map_summary, parse_result, \
    topic_for
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.sdnotify import Notifier
from inspectd.service.settings import Settings
from inspectd.service.spool import Spool
from inspectd.service.transport import Reconnector, Transport, recv_multipart_nowait, send_multipart_nowait

log = logging.getLogger(__name__)
ScreenFn = Callable[[np.ndarray], tuple[np.ndarray, float]]
DROP_REASONS = ("spool_full", "spool_full_dropped_oldest", "spool_entry_too_large", "spool_corrupt", "oversized",
                "screening_failed")


@dataclass
class Screening:
    """What a reload returns: the callable, its image threshold and the model id."""

    screen: ScreenFn
    threshold: float
    model_id: str = "unknown"
    normal_scores: np.ndarray | None = None  # the bundle's held-out normal scores (drift reference)
    image_size: int | None = None  # the square frame size the model screens (None: any)


class FrameSender(threading.Thread):
    """Sends due spool entries on PUSH and acks them from the refiners' results on SUB."""

    def __init__(self, push: zmq.Socket, sub: zmq.Socket, spool: Spool, camera: str, metrics: ServiceMetrics,
                 tick_s: float = 0.02):
        super().__init__(name="frame-sender", daemon=True)
        self.push, self.sub, self.spool = push, sub, spool
        self.topic = topic_for(camera).encode()
        self.metrics, self.tick_s = metrics, tick_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        reconnector = Reconnector(self.sub)
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        while not self.stop_event.is_set():
            if poller.poll(self.tick_s * 1000):
                self.take_acks()
            self.send_due(time.time())
            self.metrics.spool_frames.set(len(self.spool))
            self.metrics.spool_bytes.set(self.spool.bytes)
            self.metrics.spool_oldest_age.set(self.spool.oldest_age(time.time()))
            self.metrics.reconnects.inc(len(reconnector.check()))
        reconnector.close()

    def take_acks(self) -> None:
        while (parts := recv_multipart_nowait(self.sub)) is not None:
            if parts[0] != self.topic:
                continue  # a prefix match: defect.cam1 also receives defect.cam10
            try:
                result, _mask = parse_result(parts)
            except MessageError as exc:
                log.warning("bad result message: %s", exc)
                self.metrics.bad_inputs.labels(exc.kind).inc()
                continue
            if self.spool.ack(result["frame_id"]):
                self.metrics.acks.inc()

    def send_due(self, now: float) -> None:
        for frame_id in self.spool.due_for_resend(now):
            parts = self.spool.load(frame_id)
            if parts is None:
                continue  # acked or dropped meanwhile
            if not send_multipart_nowait(self.push, parts):
                return  # no refiner can take it now; the spool keeps it for the next tick
            if self.spool.attempts(frame_id) > 0:
                self.metrics.resends.inc()
                log.info("resent frame %s (no result within ack_timeout_s)", frame_id)
            self.spool.mark_sent(frame_id, now)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)


class CaptureLoop:
    """The main loop's state: settings, current model, spool and counters."""

    def __init__(self, settings: Settings, screening: Screening, metrics: ServiceMetrics, spool: Spool):
        self.settings, self.metrics, self.spool = settings, metrics, spool
        self.camera = settings.camera_id
        self.counts = {"frames": 0, "flagged": 0, "spooled": 0}
        self.use(screening)

    def use(self, screening: Screening) -> None:
        """Screen with this model from now on; the drift monitor starts afresh with its reference."""
        self.screening = screening
        self.drift = drift_monitor(self.settings, screening)
        if self.drift is not None:
            self.metrics.score_drift_threshold.labels(self.camera).set(self.settings.drift.threshold)

    def handle(self, frame: Frame) -> bool:
        """Screen one frame; spool it when flagged. True when it was flagged."""
        m = self.metrics
        m.frames_captured.labels(self.camera).inc()
        self.counts["frames"] += 1
        started = time.perf_counter()
        try:
            score_map, score = self.screening.screen(frame.image)
        except Exception as exc:  # one bad frame or model hiccup must not stop the line
            log.warning("screening frame %s failed: %s", frame.id, exc)
            m.drops.labels("screening_failed").inc()
            return False
        m.screening_latency.observe(time.perf_counter() - started)
        m.frames_screened.labels(self.camera).inc()
        if self.drift is not None and (reading := self.drift.add(float(score))) is not None:
            m.score_drift.labels(self.camera).set(reading.statistic)
        if not float(score) > self.screening.threshold:
            return False
        m.frames_flagged.labels(self.camera).inc()
        self.counts["flagged"] += 1
        self.spool_frame(frame, np.asarray(score_map), float(score))
        return True

    def spool_frame(self, frame: Frame, score_map: np.ndarray, score: float) -> None:
        header = {"frame_id": frame.id, "camera": self.camera, "captured_at": frame.timestamp,
                  "screened_at": time.time(), "score": score, "threshold": float(self.screening.threshold),
                  "map_summary": map_summary(score_map, self.screening.threshold),
                  "model_id": self.screening.model_id, "px_per_mm": self.settings.px_per_mm}
        parts = encode_frame(header, frame.image)
        size = sum(len(p) for p in parts)
        if size > self.settings.transport.max_message_bytes:
            log.warning("frame %s: %d bytes exceeds transport.max_message_bytes; dropped", frame.id, size)
            self.metrics.drops.labels("oversized").inc()
            return
        if self.spool.put(frame.id, parts):
            self.counts["spooled"] += 1


def run_capture(settings: Settings, screen: ScreenFn, stop_event: threading.Event, *,
                threshold: float | None = None, model_id: str = "unknown", normal_scores: np.ndarray | None = None,
                reload: Callable[[], Screening] | None = None, reload_event: threading.Event | None = None,
                frames: Iterator[Frame | None] | None = None, metrics: ServiceMetrics | None = None,
                notifier: Notifier | None = None, on_frame: Callable[[Frame, bool], None] | None = None) -> dict:
    """Run until the source ends and every flagged frame is acked, or until stop_event.

    `threshold` is the model's image threshold; settings.screening.threshold overrides it.
    `normal_scores` (the bundle's held-out normal scores) turn the drift monitor on.
    `reload` is called after SIGHUP (or when reload_event is set) between two frames.
    `frames` replaces the configured source; `on_frame(frame, flagged)` observes each frame.
    Returns counts. On return the spool keeps every unacked frame for the next start.
    """
    threshold = settings.screening.threshold if settings.screening.threshold is not None else threshold
    if threshold is None:
        raise ConfigError("no screening threshold: set screening.threshold or use a model bundle that has one")
    reload_event = reload_event or threading.Event()
    metrics = metrics or ServiceMetrics("capture")
    notifier = notifier or Notifier()
    metrics.init_series(settings.camera_id, DROP_REASONS, MESSAGE_ERROR_KINDS)
    metrics.set_model(model_id)
    spool = open_spool(settings, metrics)
    transport = Transport(settings.transport)
    try:
        sender = FrameSender(transport.frames_push(), transport.results_sub(topic_for(settings.camera_id)), spool,
                             settings.camera_id, metrics)
    except BaseException:  # e.g. the port is taken: release the context and the authenticator thread
        transport.close()
        raise
    loop = CaptureLoop(settings, Screening(screen, float(threshold), model_id, normal_scores), metrics, spool)
    source = frames if frames is not None else open_source(
        settings.capture, settings.camera_id, stop_event, lambda reason: metrics.source_errors.labels(reason).inc())
    serving = settings.metrics.port is not None  # else the caller serves (or not) its metrics
    if serving:
        metrics.serve(settings.metrics.host, settings.metrics.port)
    sender.start()
    metrics.up.labels("capture").set(1)
    watchdog = Watchdog(notifier, sender)
    notifier.ready(f"capturing {settings.camera_id}")
    log.info("capture %s: screening with %s (threshold %.4g), %d frame(s) waiting in the spool",
             settings.camera_id, model_id, threshold, len(spool))
    try:
        with signal_handlers(stop_event, reload_event):
            for frame in paced(source, settings.capture.fps, stop_event):
                watchdog.maybe_ping()
                if reload_event.is_set():
                    reload_event.clear()
                    reloaded = reload_model(loop.screening, reload, metrics, notifier)
                    if reloaded is not loop.screening:  # a failed reload keeps the model and its drift window
                        loop.use(reloaded)
                if stop_event.is_set():
                    break
                if frame is None:
                    continue  # the source is waiting (camera back-off, folder poll)
                flagged = loop.handle(frame)
                if on_frame is not None:
                    on_frame(frame, flagged)
            wait_for_acks(spool, stop_event, watchdog)
    finally:
        notifier.stopping()
        sender.stop()
        transport.close()
        metrics.up.labels("capture").set(0)
        if serving:
            metrics.stop()
        log.info("capture %s stopped: %s; %d frame(s) kept in the spool", settings.camera_id, loop.counts, len(spool))
    return {**loop.counts, "unacked": len(spool)}


def drift_monitor(settings: Settings, screening: Screening) -> DriftMonitor | None:
    d = settings.drift
    if not d.enabled:
        return None
    if screening.normal_scores is None or len(screening.normal_scores) == 0:
        log.info("drift monitor off: model %s has no held-out normal scores (bundle fitted before they were "
                 "saved; refit with `inspectd fit` to turn it on)", screening.model_id)
        return None
    return DriftMonitor(screening.normal_scores, screening.threshold, d.window, d.min_frames, d.every, d.threshold,
                        settings.camera_id)


def open_spool(settings: Settings, metrics: ServiceMetrics) -> Spool:
    s = settings.spool
    return Spool(s.dir, s.max_frames, s.max_bytes, s.ack_timeout_s, s.full_policy,
                 on_drop=lambda reason, frame_id: metrics.drops.labels(reason).inc())


class Watchdog:
    """WATCHDOG=1 at half of WatchdogSec, only while the sender thread is alive too."""

    def __init__(self, notifier: Notifier, sender: threading.Thread):
        self.notifier, self.sender = notifier, sender
        self.interval = notifier.watchdog_interval()
        self.last = 0.0

    def maybe_ping(self) -> None:
        now = time.monotonic()
        if self.interval and now - self.last >= self.interval and self.sender.is_alive():
            self.notifier.watchdog()
            self.last = now


def wait_for_acks(spool: Spool, stop_event: threading.Event, watchdog: Watchdog) -> None:
    """After a finite source: keep the sender running until every flagged frame is acked."""
    if len(spool):
        log.info("source ended; waiting for %d result(s)", len(spool))
    while len(spool) and not stop_event.wait(0.05):
        watchdog.maybe_ping()
