"""The capture process: source -> screen every frame -> spool + PUSH the flagged ones.

Two threads. The main loop reads frames, screens them, decides with the threshold and writes
flagged frames to the spool (durable before anything is sent). The sender thread owns the zmq
sockets: it sends whatever the spool says is due (new frames, and unacked ones after
ack_timeout_s), and it removes a frame from the spool when its result appears on a refiner's
PUB socket (the ack). A refiner that dies mid-frame therefore costs a resend, never a frame.
Refiners' heartbeats (heartbeat.py) tell the sender within seconds that one has died: its frames
are resent at once, and a frame that refiners died on refiner.max_attempts times, or whose
result says "error", goes to the dead-letter folder instead of being sent again.

Neither loop ends on one frame or message (each failure is logged and counted in
inspectd_loop_errors_total); a sender thread that fails on every tick gives up, and the main
loop then ends the process (ThreadDied, a non-zero exit: systemd restarts it).

The screening model arrives as a plain callable `screen(image) -> (score_map, score)`.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import zmq

from inspectd.data.images import DEFAULT_MAX_PIXELS
from inspectd.deploy.drift import DriftMonitor
from inspectd.deploy.inspector import ChainSettings, coarse_threshold
from inspectd.deploy.native import flagged_regions, pixels_read
from inspectd.errors import ConfigError
from inspectd.geometry import FrameCrops
from inspectd.service.capture import Frame, open_source, paced
from inspectd.service.heartbeat import HEARTBEAT_TOPIC, RefinerTracker, parse_heartbeat
from inspectd.service.lifecycle import check_alive, reload_model, signal_handlers
from inspectd.service.messages import ACK_ERROR_KINDS, MAX_MASK_CROPS, MESSAGE_ERROR_KINDS, MessageError, \
    encode_frame, map_summary, parse_result, topic_for
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.sdnotify import Notifier
from inspectd.service.settings import Settings
from inspectd.service.spool import Spool
from inspectd.service.transport import Reconnector, Transport, recv_multipart_nowait, send_multipart_nowait

log = logging.getLogger(__name__)
ScreenFn = Callable[[np.ndarray], tuple[np.ndarray, float]]
DROP_REASONS = ("spool_full", "spool_full_dropped_oldest", "spool_entry_too_large", "spool_corrupt", "oversized",
                "screening_failed", "spool_disk_full", "spool_write_failed", "frame_too_large")
DEAD_LETTER_REASONS = ("refinement_failed", "refiner_died")
SENDER_MAX_FAILED_TICKS = 50  # consecutive failing ticks (about a second) before the sender gives up


@dataclass
class Screening:
    """What a reload returns: the callable, its image threshold and the model id."""

    screen: ScreenFn
    threshold: float
    model_id: str = "unknown"
    # the bundle's chain settings: with them, flagged frames carry their regions in native pixels
    chain: ChainSettings | None = None
    normal_scores: np.ndarray | None = None  # the bundle's held-out normal scores (drift reference)
    image_size: int | None = None  # the square frame size the model screens (None: any)
    # the tile refiner's window size when flagged frames travel as crops (transport.frame_payload
    # "crops"): the message carries the pixels its windows read; None sends the whole frame
    crop_tile: int | None = None
    # screen the native frame as it is (8 bit when the camera gives 8 bit): a tiled screening
    # cuts its own windows, so the capture neither shrinks the frame nor makes it float whole
    native: bool = False


class FrameSender(threading.Thread):
    """Sends due spool entries on PUSH, acks them from the refiners' results on SUB, and follows
    the refiners' heartbeats."""

    def __init__(self, push: zmq.Socket, sub: zmq.Socket, spool: Spool, camera: str, metrics: ServiceMetrics,
                 tick_s: float = 0.02, max_attempts: int = 3, handshake_backoff_max_s: float = 30.0,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(name="frame-sender", daemon=True)
        self.push, self.sub, self.spool, self.max_pixels = push, sub, spool, max_pixels
        self.topic = topic_for(camera).encode()
        self.metrics, self.tick_s, self.max_attempts = metrics, tick_s, max_attempts
        self.handshake_backoff_max_s = handshake_backoff_max_s
        self.refiners = RefinerTracker()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)

    def run(self) -> None:
        failures = self.metrics.handshake_failures
        reconnector = Reconnector(self.sub, self.handshake_backoff_max_s,
                                  lambda endpoint: failures.labels("results_sub").inc())
        push_monitor = Reconnector(self.push, on_handshake_failure=lambda endpoint: failures.labels("frames_push").inc(),
                                   reconnect=False)
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        failed_ticks = 0
        try:
            while not self.stop_event.is_set():
                try:
                    self.tick(poller, reconnector)
                    push_monitor.check()
                    failed_ticks = 0
                except Exception as exc:  # one bad tick is logged; a sender that only fails gives up
                    failed_ticks += 1
                    log.exception("frame sender: tick failed (%d in a row): %s", failed_ticks, exc)
                    self.metrics.loop_errors.labels("sender").inc()
                    if failed_ticks >= SENDER_MAX_FAILED_TICKS:
                        raise
                    self.stop_event.wait(self.tick_s)
        except BaseException as exc:  # the main loop sees the thread gone and ends the process
            self.error = exc
        finally:
            reconnector.close()
            push_monitor.close()

    def tick(self, poller: zmq.Poller, reconnector: Reconnector) -> None:
        if poller.poll(self.tick_s * 1000):
            self.take_acks()
        self.check_refiners(time.monotonic())
        self.send_due(time.time())
        self.metrics.spool_frames.set(len(self.spool))
        self.metrics.spool_bytes.set(self.spool.bytes)
        self.metrics.spool_oldest_age.set(self.spool.oldest_age(time.time()))
        self.metrics.spool_writable.set(int(self.spool.disk_ok))
        self.metrics.reconnects.inc(len(reconnector.check()))

    def take_acks(self) -> None:
        while (parts := recv_multipart_nowait(self.sub)) is not None:
            try:
                self.take_message(parts)
            except Exception as exc:  # one message can never stop the acks
                log.exception("frame sender: a result message failed and is skipped: %s", exc)
                self.metrics.loop_errors.labels("ack_reader").inc()

    def take_message(self, parts: list[bytes]) -> None:
        if parts[0] == HEARTBEAT_TOPIC:
            return self.take_heartbeat(parts)
        if parts[0] != self.topic:
            return  # a prefix match: defect.cam1 also receives defect.cam10
        try:
            result, _mask = parse_result(parts, self.max_pixels)
        except MessageError as exc:
            log.warning("bad result message: %s", exc)
            self.metrics.bad_inputs.labels(exc.kind).inc()
            return
        frame_id, token = result["frame_id"], result.get("ack_token", "")
        if not self.spool.holds(frame_id, token):
            if frame_id in self.spool:  # well-formed, but not from the refiner holding the frame
                log.warning("result for spooled frame %s without its ack_token: not an ack (forged?)", frame_id)
                self.metrics.bad_inputs.labels("bad_ack_token").inc()
            return
        if result["decision"] == "error":  # the refiner gave up on it: keep it aside, do not resend
            if self.spool.dead_letter(frame_id, "refinement_failed", str(result.get("error", ""))):
                self.metrics.acks.inc()
        elif self.spool.ack(frame_id, token):
            self.metrics.acks.inc()

    def take_heartbeat(self, parts: list[bytes]) -> None:
        try:
            heartbeat = parse_heartbeat(parts)
        except MessageError as exc:
            log.warning("bad heartbeat message: %s", exc)
            self.metrics.bad_inputs.labels(exc.kind).inc()
            return
        if self.refiners.seen(heartbeat, time.monotonic()):
            log.info("refiner %s is up", heartbeat["refiner"])
        self.metrics.refiners_alive.set(len(self.refiners))

    def check_refiners(self, now: float) -> None:
        """A refiner whose heartbeats stopped: resend at once; a frame that killed too many: dead letter."""
        for refiner, busy in self.refiners.lost(now):
            self.metrics.refiners_lost.inc()
            deaths = self.spool.record_failure(busy) if busy else 0
            log.warning("refiner %s stopped sending heartbeats%s; resending its frames now", refiner,
                        f" while refining frame {busy} ({deaths} refiner death(s) on it)" if deaths else "")
            if deaths >= self.max_attempts:
                self.spool.dead_letter(busy, "refiner_died", f"{deaths} refiner(s) died while refining it")
            self.spool.resend_now()
            self.metrics.refiners_alive.set(len(self.refiners))

    def send_due(self, now: float) -> None:
        for frame_id in self.spool.due_for_resend(now):
            parts = self.spool.load(frame_id)
            if parts is None:
                continue  # acked or dropped meanwhile
            if not send_multipart_nowait(self.push, parts):
                return  # no refiner can take it now; the spool keeps it for the next tick
            if self.spool.attempts(frame_id) > 0:
                self.metrics.resends.inc()
                log.info("resent frame %s", frame_id)
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
        try:
            return self.screen_and_spool(frame)
        except Exception as exc:  # one frame can never end the loop
            log.exception("capture loop: frame %s failed and is skipped: %s", frame.id, exc)
            m.loop_errors.labels("capture").inc()
            return False

    def screen_and_spool(self, frame: Frame) -> bool:
        m = self.metrics
        height, width = frame.hw
        if height * width > self.settings.transport.max_frame_pixels:
            log.warning("frame %s: %dx%d exceeds transport.max_frame_pixels=%d; dropped", frame.id, width, height,
                        self.settings.transport.max_frame_pixels)
            m.drops.labels("frame_too_large").inc()
            return False
        started = time.perf_counter()
        try:
            image = frame.pixels() if self.screening.native else frame.for_screening(self.screening.image_size)
            score_map, score = self.screening.screen(image)
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
                  "model_id": self.screening.model_id, "px_per_mm": self.settings.px_per_mm,
                  "ack_token": secrets.token_hex(16)}  # echoed by the genuine result only: see FrameSender
        if self.screening.chain is not None:
            threshold = coarse_threshold(self.screening.chain, float(np.max(score_map)))
            header["regions"] = flagged_regions(score_map, threshold, frame.hw)
        parts = encode_frame(header, self.payload(frame, header.get("regions")))
        size = sum(len(p) for p in parts)
        if size > self.settings.transport.max_message_bytes:
            log.warning("frame %s: %d bytes exceeds transport.max_message_bytes; dropped", frame.id, size)
            self.metrics.drops.labels("oversized").inc()
            return
        if self.spool.put(frame.id, parts, header["ack_token"]):
            self.counts["spooled"] += 1


    def payload(self, frame: Frame, regions: list | None) -> np.ndarray | FrameCrops:
        """The whole frame, or with a tile refiner only the pixels its windows read around the
        flagged regions (deploy.native.pixels_read, the refiner's own rule)."""
        tile = self.screening.crop_tile
        if not tile or not regions:
            return frame.pixels()
        boxes = pixels_read(regions, frame.hw, tile)
        if len(boxes) > MAX_MASK_CROPS:  # scattered regions: the whole frame is the smaller message
            return frame.pixels()
        return FrameCrops.cut(frame.pixels(), boxes)


def run_capture(settings: Settings, screen: ScreenFn, stop_event: threading.Event, *,
                threshold: float | None = None, model_id: str = "unknown", normal_scores: np.ndarray | None = None,
                reload: Callable[[], Screening] | None = None, reload_event: threading.Event | None = None,
                frames: Iterator[Frame | None] | None = None, metrics: ServiceMetrics | None = None,
                notifier: Notifier | None = None, on_frame: Callable[[Frame, bool], None] | None = None,
                chain: ChainSettings | None = None, image_size: int | None = None,
                crop_tile: int | None = None, native: bool = False) -> dict:
    """Run until the source ends and every flagged frame is acked, or until stop_event.

    `threshold` is the model's image threshold; settings.screening.threshold overrides it.
    `normal_scores` (the bundle's held-out normal scores) turn the drift monitor on.
    `reload` is called after SIGHUP (or when reload_event is set) between two frames.
    `frames` replaces the configured source; `on_frame(frame, flagged)` observes each frame.
    `chain` (the screening bundle's ChainSettings) makes flagged frames carry their regions.
    `image_size` (the model's square input) lets each frame be shrunk to it as cheaply as its
    form allows (Frame.for_screening) before `screen` sees it. `crop_tile` (a tile refiner's
    window size) sends flagged frames as the crops that refiner reads (Screening.crop_tile).
    `native` hands `screen` the native frame as it is (a tiled screening, Screening.native).
    Returns counts. On return the spool keeps every unacked frame for the next start.
    """
    threshold = settings.screening.threshold if settings.screening.threshold is not None else threshold
    if threshold is None:
        raise ConfigError("no screening threshold: set screening.threshold or use a model bundle that has one")
    reload_event = reload_event or threading.Event()
    metrics = metrics or ServiceMetrics("capture")
    notifier = notifier or Notifier()
    metrics.init_series(settings.camera_id, DROP_REASONS, MESSAGE_ERROR_KINDS + ACK_ERROR_KINDS)
    for reason in DEAD_LETTER_REASONS:
        metrics.dead_letters.labels(reason)
    metrics.set_model(model_id)
    spool = open_spool(settings, metrics)
    spool.check_writable()  # before READY: a spool that cannot be written is one clear error
    transport = Transport(settings.transport)
    try:
        sender = FrameSender(transport.frames_push(), transport.results_sub(topic_for(settings.camera_id)), spool,
                             settings.camera_id, metrics, max_attempts=settings.refiner.max_attempts,
                             handshake_backoff_max_s=settings.transport.handshake_backoff_max_s,
                             max_pixels=settings.transport.max_frame_pixels)
    except BaseException:  # e.g. the port is taken: release the context and the authenticator thread
        transport.close()
        raise
    loop = CaptureLoop(settings, Screening(screen, float(threshold), model_id, chain, normal_scores, image_size,
                                           crop_tile, native),
                      metrics, spool)
    source = frames if frames is not None else open_source(
        settings.capture, settings.camera_id, stop_event, lambda reason: metrics.source_errors.labels(reason).inc(),
        journal=folder_journal_path(settings))
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
                check_alive(sender, metrics, "capture")
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
            wait_for_acks(spool, stop_event, watchdog, lambda: check_alive(sender, metrics, "capture"))
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
                 on_drop=lambda reason, frame_id: metrics.drops.labels(reason).inc(),
                 dead_letter_dir=s.dead_letter_dir,
                 on_dead_letter=lambda reason, frame_id: metrics.dead_letters.labels(reason).inc())


def folder_journal_path(settings: Settings) -> Path:
    """The folder source's record of what it has read: a small file beside the spool folder."""
    spool_dir = Path(settings.spool.dir)
    return spool_dir.with_name(spool_dir.name + "-folder-read.txt")


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


def wait_for_acks(spool: Spool, stop_event: threading.Event, watchdog: Watchdog,
                  check: Callable[[], None] = lambda: None) -> None:
    """After a finite source: keep the sender running until every flagged frame is acked."""
    if len(spool):
        log.info("source ended; waiting for %d result(s)", len(spool))
    while len(spool) and not stop_event.wait(0.05):
        check()
        watchdog.maybe_ping()
