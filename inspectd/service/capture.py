"""Frame sources: OpenCV VideoCapture, an image folder, and the synthetic demo line.

Each source is an iterator of Frame objects and takes the process's stop event, so its waits
(back-off, folder polling) end at once on shutdown. While it waits, a source yields None about
once a second: the capture loop stays alive for acks, reloads and the systemd watchdog, and a
source that hangs (a stuck RTSP read) stops those pings, so systemd restarts the process. A lost camera or an unreadable frame never
ends a source: it is reported through `on_error(reason)` (a metric in the daemon) and the
source reconnects with exponential back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from inspectd.data.images import list_images, read_image, resize_image, to_float_rgb
from inspectd.data.synth import DefectSynthesizer, SynthConfig
from inspectd.data.textures import texture_parts
from inspectd.errors import BadImageError, ConfigError
from inspectd.service.settings import CaptureSettings

log = logging.getLogger(__name__)
ErrorCallback = Callable[[str], None]


@dataclass
class Frame:
    id: str
    camera: str
    timestamp: float  # capture time, seconds since the epoch
    image: np.ndarray  # float32 RGB (H, W, 3) in [0, 1]
    truth: np.ndarray | None = None  # bool (H, W) defect mask, known only on the demo line
    source: str = ""  # file name, URL or "demo"
    extra: dict = field(default_factory=dict)


class Backoff:
    """Waits initial, 2x, 4x ... up to maximum seconds; reset() after a success."""

    def __init__(self, initial: float, maximum: float):
        self.initial, self.maximum = initial, maximum
        self.next = initial

    def wait(self, stop: threading.Event) -> Iterator[None]:
        """Wait the current delay, yielding idle ticks; returns True when stopping."""
        delay, self.next = self.next, min(self.next * 2, self.maximum)
        return (yield from idle_wait(delay, stop))

    def reset(self) -> None:
        self.next = self.initial


class FrameIds:
    """Unique ids across restarts: camera, the process start time, then a counter."""

    def __init__(self, camera: str):
        self.prefix = f"{camera}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1000000:06d}"
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"{self.prefix}-{self.count:07d}"


def idle_wait(seconds: float, stop: threading.Event, tick: float = 1.0) -> Iterator[None]:
    """Wait up to `seconds`, yielding None every `tick`; returns True when stopping."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stop.wait(min(tick, left)):
            return True
        yield None
    return stop.is_set()


# --- sources ---------------------------------------------------------------------------------
def open_source(settings: CaptureSettings, camera: str, stop: threading.Event,
                on_error: ErrorCallback | None = None) -> Iterator[Frame | None]:
    on_error = on_error or (lambda reason: None)
    if settings.source == "demo":
        frames = demo_line(settings, camera, stop)
    elif settings.source == "folder":
        frames = folder_frames(settings, camera, stop, on_error)
    else:
        frames = video_frames(settings, camera, stop, on_error)
    return limited(frames, settings.max_frames)


def limited(frames: Iterator[Frame | None], max_frames: int | None) -> Iterator[Frame | None]:
    count = 0
    for frame in frames:
        if frame is not None:
            if max_frames is not None and count >= max_frames:
                return
            count += 1
        yield frame


def demo_line(settings: CaptureSettings, camera: str, stop: threading.Event) -> Iterator[Frame]:
    """Parts cut from a scikit-image texture; a share carries a pasted defect, truth kept."""
    demo, size = settings.demo, settings.size or 256
    rng = np.random.default_rng(demo.seed + 1000)
    synth = DefectSynthesizer(None, SynthConfig(size=size, area_range=tuple(demo.area_range)), seed=demo.seed + 1)
    next_id = FrameIds(camera)
    while not stop.is_set():
        # parts in batches: one texture load serves several parts
        for part in texture_parts(demo.texture, 8, size, seed=int(rng.integers(1 << 31))):
            if rng.random() < demo.defect_rate:
                image, truth = synth(part)
            else:
                image, truth = part, np.zeros(part.shape[:2], bool)
            yield Frame(next_id(), camera, time.time(), image, truth, source="demo")


def folder_frames(settings: CaptureSettings, camera: str, stop: threading.Event,
                  on_error: ErrorCallback) -> Iterator[Frame | None]:
    """Every image in the folder in name order; with watch, then each new file as it appears."""
    folder = Path(settings.uri)
    if not folder.is_dir():
        raise ConfigError(f"capture.uri {folder}: not a folder")
    next_id, done = FrameIds(camera), set()
    while not stop.is_set():
        for path in list_images(folder):
            if path in done or stop.is_set():
                continue
            done.add(path)
            try:
                image = read_image(path, settings.size)
            except BadImageError as exc:
                log.warning("skipping %s", exc)
                on_error("bad_frame")
                continue
            yield Frame(next_id(), camera, time.time(), image, source=path.name)
        if not settings.watch or (yield from idle_wait(settings.poll_s, stop)):
            return


def video_frames(settings: CaptureSettings, camera: str, stop: threading.Event,
                 on_error: ErrorCallback) -> Iterator[Frame | None]:
    """A camera (index), stream URL or video file. A file ends at its end; a camera never does."""
    uri = settings.uri
    is_file = Path(uri).is_file()
    target = int(uri) if uri.isdigit() else uri
    backoff, next_id = Backoff(settings.reconnect_initial_s, settings.reconnect_max_s), FrameIds(camera)
    while not stop.is_set():
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            log.warning("camera %s: cannot open %s; retrying in %.1f s", camera, uri, backoff.next)
            on_error("camera_lost")
            if (yield from backoff.wait(stop)):
                return
            continue
        try:
            for raw in read_until_lost(cap, stop):
                if raw is None:
                    on_error("bad_frame")
                    continue
                backoff.reset()
                image = resize_image(raw, settings.size) if settings.size else raw
                yield Frame(next_id(), camera, time.time(), image, source=str(uri))
        finally:
            cap.release()
        if is_file or stop.is_set():
            return
        log.warning("camera %s: lost %s; reconnecting in %.1f s", camera, uri, backoff.next)
        on_error("camera_lost")
        if (yield from backoff.wait(stop)):
            return


def read_until_lost(cap: cv2.VideoCapture, stop: threading.Event) -> Iterator[np.ndarray | None]:
    """Float RGB frames; None for a frame that decodes to garbage; returns when the stream ends."""
    while not stop.is_set():
        ok, raw = cap.read()
        if not ok or raw is None:
            return
        try:
            yield to_float_rgb(raw, "camera frame", bgr=True)
        except BadImageError as exc:
            log.warning("bad camera frame: %s", exc)
            yield None


def paced(frames: Iterator[Frame | None], fps: float, stop: threading.Event) -> Iterator[Frame | None]:
    """At most `fps` frames per second (a real line's rate for the demo; 0 = unpaced)."""
    period = 1.0 / fps if fps > 0 else 0.0
    next_at = time.monotonic()
    for frame in frames:
        yield frame
        if frame is None or not period:
            continue
        next_at = max(next_at + period, time.monotonic())  # after a stall, do not burst to catch up
        if stop.wait(max(0.0, next_at - time.monotonic())):
            return
