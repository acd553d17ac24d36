"""The demo line paced to its refiner (`inspectd run`), so a small machine never builds an
ever-growing spool.

A real camera cannot wait for the refiners (docs/DEPLOYMENT.md sizes them instead); the demo
line can. At start, `measure_line` screens a sample of demo frames (the flag rate) and refines
two flagged ones (seconds per refinement); `paced_fps` then picks the frame rate whose flagged
frames the refiner takes at a utilisation below 1. The rate follows the refiner's running mean
time once it has refined frames (defect size and other load change it), and
`hold_while_backlogged` also stops the demo conveyor while a few flagged frames wait, which
bounds the spool whatever the estimate was.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from inspectd.service.capture import Frame, open_source
from inspectd.service.capture_process import Screening
from inspectd.service.refiner_process import Refinement
from inspectd.service.settings import Settings

log = logging.getLogger(__name__)
UTILISATION = 0.7  # of the refiner: bursts of flags drain instead of queueing for good
SAMPLE_FRAMES = 60  # screened at start to estimate the flag rate
MAX_WAITING = 4  # flagged frames allowed to wait (in the spool) before the demo conveyor holds
HOLD_TICK_S = 0.05


@dataclass
class LineMeasure:
    refine_seconds: float  # per flagged frame, warm
    flag_rate: float  # share of demo frames the screener flags

    @property
    def refiner_capacity(self) -> float:
        """Flagged frames per second the refiner can take."""
        return 1.0 / self.refine_seconds


def paced_fps(configured_fps: float, measure: LineMeasure, utilisation: float = UTILISATION) -> float:
    """The highest frame rate (at most the configured one; 0 there means unpaced) whose flagged
    frames keep the refiner busy `utilisation` of the time."""
    if measure.flag_rate <= 0:
        return configured_fps
    fps = utilisation * measure.refiner_capacity / measure.flag_rate
    return min(configured_fps, fps) if configured_fps > 0 else fps


def measure_line(settings: Settings, screening: Screening, refinement: Refinement) -> LineMeasure:
    """Flag rate over SAMPLE_FRAMES demo frames; seconds of the second of two refinements (the
    first pays one-off costs)."""
    source = open_source(settings.capture.model_copy(update={"max_frames": SAMPLE_FRAMES}), settings.camera_id,
                         threading.Event())
    frames = [f for f in source if f is not None]
    flagged = []
    for frame in frames:
        _, score = screening.screen(frame.image)
        if float(score) > screening.threshold:
            flagged.append((frame, float(score)))
    seconds = [time_refinement(refinement, frame, score) for frame, score in flagged[:2]]
    refine_seconds = seconds[-1] if seconds else 0.0
    return LineMeasure(max(refine_seconds, 1e-3), len(flagged) / max(len(frames), 1))


def time_refinement(refinement: Refinement, frame: Frame, score: float) -> float:
    started = time.perf_counter()
    refinement.refine(frame.image, {"score": score})
    return time.perf_counter() - started


def hold_while_backlogged(frames: Iterator[Frame | None], waiting: Callable[[], float], stop: threading.Event,
                          limit: int = MAX_WAITING, period: Callable[[], float] = lambda: 0.0
                          ) -> Iterator[Frame | None]:
    """The source's frames, at most one per `period()` seconds (asked again for each frame, so the
    rate follows the refiner), and none taken while `waiting()` >= limit: meanwhile it yields
    None (the capture loop's "no frame now"), so acks and the watchdog go on. A frame is made only
    when it is due, so its capture time is when it was really taken."""
    frames, next_at = iter(frames), time.monotonic()
    while not stop.is_set():
        if waiting() >= limit or time.monotonic() < next_at:
            yield None
            stop.wait(min(HOLD_TICK_S, max(0.0, next_at - time.monotonic())) or HOLD_TICK_S)
            continue
        frame = next(frames, StopIteration)
        if frame is StopIteration:
            return
        next_at = time.monotonic() + period()
        yield frame


def running_refine_seconds(metrics, measured: float) -> Callable[[], float]:
    """Mean seconds per refinement of the refiner so far (its histogram), the start-up measure
    until it has refined a frame."""
    def mean() -> float:
        count = metrics.registry.get_sample_value("inspectd_refinement_duration_seconds_count") or 0
        total = metrics.registry.get_sample_value("inspectd_refinement_duration_seconds_sum") or 0
        return total / count if count else measured
    return mean


def describe(measure: LineMeasure, configured_fps: float, fps: float) -> str:
    configured = f"{configured_fps:g}" if configured_fps > 0 else "unpaced"
    return (f"demo line: the refiner takes {measure.refine_seconds:.2f} s per flagged frame, "
            f"{measure.refiner_capacity:.3g} flagged frames/s; {100 * measure.flag_rate:.0f} % of demo frames are "
            f"flagged, so the line runs at {fps:.3g} frames/s (configured {configured}, refiner busy "
            f"{100 * UTILISATION:.0f} %), and holds while {MAX_WAITING} flagged frames wait")
