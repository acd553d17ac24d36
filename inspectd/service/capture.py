"""Frame sources: OpenCV VideoCapture, an image folder, and the synthetic demo line.

Each source is an iterator of Frame objects and takes the process's stop event, so its waits
(back-off, folder polling) end at once on shutdown. While it waits, a source yields None about
once a second: the capture loop stays alive for acks, reloads and the systemd watchdog, and a
source that hangs (a stuck RTSP read) stops those pings, so systemd restarts the process. A lost camera or an unreadable frame never
ends a source: it is reported through `on_error(reason)` (a metric in the daemon) and the
source reconnects with exponential back-off. An image a folder source cannot read (corrupt,
declaring a huge size) is counted and skipped; a source that fails anyway is opened again
(`restarting`). A folder source keeps a journal of the images it has handled (a small file
beside the spool), so a restart goes on where it stopped instead of spooling the same images
again, and a folder image's frame id comes from its name, size and time: reading it twice gives
the same id, which the spool and the subscribers de-duplicate.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from inspectd.data.images import JPEG_SOI, EncodedImage, list_images, read_image, resize_image, screening_input, to_float_rgb, \
    to_rgb8
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
    # RGB (H, W, 3): float32 in [0, 1], or 8 bit for a native camera frame (3 bytes a pixel);
    # None while `encoded` holds the frame (decoded by pixels() only when it is needed)
    image: np.ndarray | None
    truth: np.ndarray | None = None  # bool (H, W) defect mask, known only on the demo line
    source: str = ""  # file name, URL or "demo"
    extra: dict = field(default_factory=dict)
    encoded: EncodedImage | None = None  # a native frame as its file (a folder's JPEG)

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) in native pixels, known without decoding."""
        if self.image is None:
            return self.encoded.height, self.encoded.width
        return self.image.shape[0], self.image.shape[1]

    def pixels(self) -> np.ndarray:
        """The native frame (a flagged frame's message carries it), decoded once."""
        if self.image is None:
            self.image = self.encoded.decode()
        return self.image

    def for_screening(self, size: int | None) -> np.ndarray:
        """The screening model's float input at size x size, made as cheaply as the frame allows:
        an encoded JPEG is decoded at reduced size, 8-bit frames shrink in 8 bit. The same code
        serves `inspectd bench native`. size None (a model of any size): the float frame."""
        if size is None:
            image = self.pixels()
            return image if image.dtype == np.float32 else to_float_rgb(image)
        if self.image is None:
            return screening_input(self.encoded.decode_at_least(size), size)
        return screening_input(self.image, size)


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
                on_error: ErrorCallback | None = None, journal: Path | None = None) -> Iterator[Frame | None]:
    """The configured source; `journal` (folder source) is the file that remembers what was read."""
    on_error = on_error or (lambda reason: None)

    def start() -> Iterator[Frame | None]:
        if settings.source == "demo":
            return demo_line(settings, camera, stop)
        if settings.source == "folder":
            return folder_frames(settings, camera, stop, on_error, ReadJournal(journal))
        return video_frames(settings, camera, stop, on_error)

    return limited(restarting(start, stop, on_error, settings.reconnect_initial_s, settings.reconnect_max_s),
                   settings.max_frames)


def restarting(start: Callable[[], Iterator[Frame | None]], stop: threading.Event, on_error: ErrorCallback,
               initial_s: float, max_s: float) -> Iterator[Frame | None]:
    """The source's frames; when it raises, log, count (`source_failed`) and open it again, with
    back-off. A ConfigError (no such folder) is the settings' fault and ends it."""
    backoff = Backoff(initial_s, max_s)
    while not stop.is_set():
        try:
            yield from start()
            return
        except ConfigError:
            raise
        except Exception as exc:
            log.exception("the frame source failed (%s); opening it again in %.1f s", exc, backoff.next)
            on_error("source_failed")
            if (yield from backoff.wait(stop)):
                return


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
                  on_error: ErrorCallback, journal: ReadJournal | None = None) -> Iterator[Frame | None]:
    """Every image in the folder in name order; with watch, then each new file as it appears.

    An image enters the journal once the capture loop has handled it (the generator resumes after
    the loop is done with the frame), so a crash mid-frame reads it again, under the same id.
    """
    folder = Path(settings.uri)
    if not folder.is_dir():
        raise ConfigError(f"capture.uri {folder}: not a folder")
    journal = journal or ReadJournal(None)
    while not stop.is_set():
        for path in list_images(folder):
            if stop.is_set():
                break
            key = file_key(path)
            if key is None or key in journal:
                continue
            try:
                image, encoded = read_folder_image(path, settings.size)
            except Exception as exc:  # corrupt, a PNG declaring a huge size, ...: skip it, never stop
                log.warning("skipping %s: %s", path.name, exc)
                on_error("bad_frame")
                journal.add(key)
                continue
            yield Frame(folder_frame_id(camera, path, key), camera, time.time(), image, source=path.name,
                        encoded=encoded)
            journal.add(key)
        if not settings.watch or (yield from idle_wait(settings.poll_s, stop)):
            return


def read_folder_image(path: Path, size: int | None) -> tuple[np.ndarray | None, EncodedImage | None]:
    """(image, None) resized to capture.size; at native size (size None) a JPEG stays encoded
    (screening decodes it at reduced size, a flagged frame in full), any other format is decoded
    to 8-bit RGB. Declared sizes are checked before decoding either way."""
    if size is not None:
        return read_image(path, size), None
    encoded = EncodedImage(path.read_bytes(), path.name)
    if encoded.data[:2] == JPEG_SOI:
        return None, encoded
    return encoded.decode(), None


def file_key(path: Path) -> str | None:
    """name, size and modification time: a file replaced under the same name is a new image."""
    try:
        st = path.stat()
    except OSError:
        return None  # gone since the listing
    return f"{path.name}\t{st.st_size}\t{st.st_mtime_ns}"


def folder_frame_id(camera: str, path: Path, key: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:40]
    return f"{camera}-{stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


class ReadJournal:
    """The folder images already handled: one line each, appended and fsynced as each is done.

    Without a path it only remembers in memory. A journal that cannot be written (full disk) is
    logged once; the source goes on (a restart may then read some images again, same ids).
    """

    def __init__(self, path: Path | None):
        self.path, self.keys, self.failed = path, set(), False
        if path is not None and path.is_file():
            self.keys = set(path.read_text(errors="replace").splitlines())
            log.info("folder journal %s: %d image(s) already read will be skipped", path, len(self.keys))

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def add(self, key: str) -> None:
        self.keys.add(key)
        if self.path is None:
            return
        try:
            with open(self.path, "a") as f:
                f.write(key + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if not self.failed:
                log.warning("folder journal %s: cannot write (%s)", self.path, exc.strerror or exc)
            self.failed = True


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
                # a native frame stays 8 bit (screening shrinks it before any float conversion)
                image = to_float_rgb(resize_image(raw, settings.size)) if settings.size else raw
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
    """RGB frames as the camera gives them (8 bit; other depths as float); None for a frame that
    decodes to garbage; returns when the stream ends."""
    while not stop.is_set():
        ok, raw = cap.read()
        if not ok or raw is None:
            return
        try:
            yield to_rgb8(raw, "camera frame", bgr=True)
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
