"""`inspectd watch`: subscribe to the refiners' results and print one line per defect.

No message ends it: a result that cannot be parsed or printed is logged and skipped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Iterator

import numpy as np
import zmq

from inspectd.service.messages import TOPIC_PREFIX, MessageError, parse_result, topic_for
from inspectd.service.settings import Settings
from inspectd.service.transport import Deduplicator, Reconnector, Transport, recv_multipart_nowait

log = logging.getLogger(__name__)


def results(settings: Settings, stop_event: threading.Event, camera: str | None = None,
            timeout_s: float | None = None, ready: threading.Event | None = None,
            connect_wait_s: float = 5.0, on_bad: Callable[[str], None] | None = None,
            tick: Callable[[], None] | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """(result, mask) for each frame once (resends are de-duplicated), until stop or timeout.

    PUB/SUB drops what is published before a subscriber is connected, so this first waits up
    to connect_wait_s for every refiner's handshake, then sets `ready`. A bad message is logged,
    passed to `on_bad(kind)` (a metric) and skipped; `tick()` runs every 100 ms (a watchdog).
    """
    transport = Transport(settings.transport)
    topic = topic_for(camera) if camera else TOPIC_PREFIX
    sub = transport.results_sub(topic, wait_s=connect_wait_s)
    reconnector = Reconnector(sub, settings.transport.handshake_backoff_max_s)  # backs off from failed handshakes
    dedup = Deduplicator()
    deadline = time.monotonic() + timeout_s if timeout_s else None
    if ready is not None:
        ready.set()
    try:
        while not stop_event.is_set() and (deadline is None or time.monotonic() < deadline):
            reconnector.check()
            if tick is not None:
                tick()
            if not sub.poll(100, zmq.POLLIN):
                continue
            while (parts := recv_multipart_nowait(sub)) is not None:
                if camera and parts[0] != topic.encode():
                    continue  # prefix match: defect.cam1 also matches defect.cam10
                try:
                    result, mask = parse_result(parts, settings.transport.max_frame_pixels)
                except MessageError as exc:
                    log.warning("ignoring bad result message: %s", exc)
                    if on_bad is not None:
                        on_bad(exc.kind)
                    continue
                except Exception as exc:  # whatever it was, the next message is read
                    log.warning("ignoring a result message that failed to parse (%s: %s)", type(exc).__name__,
                                str(exc)[:200])
                    if on_bad is not None:
                        on_bad("malformed")
                    continue
                # keyed with the token too: a forged result first never hides the genuine one
                if dedup.first_time(f"{result['frame_id']}#{result.get('ack_token', '')}"):
                    yield result, mask
    finally:
        reconnector.close()
        transport.close()


def format_result(result: dict) -> list[str]:
    """One line per defect (or one line saying there is none), with the measured geometry."""
    head = (f"{result['camera']} {result['frame_id']} score {result['image_score']:.3f} "
            f"{result['decision']} ({result['refinement']['seconds']:.2f} s, "
            f"{result['refinement']['iterations']} it)")
    if result["decision"] == "error":
        return [f"{head}: {result.get('error', 'refinement failed')}"]
    if not result["defects"]:
        return [f"{head}: no defect after refinement"]
    return [f"{head} defect {i + 1}/{len(result['defects'])}: {format_defect(d)}"
            for i, d in enumerate(result["defects"])]


def printable(result: dict) -> list[str] | None:
    """format_result's lines, or None for a result whose nested values it cannot read.

    parse_result checks the top-level fields; what a refiner put inside (defects, refinement)
    is only read here, so a wrong type there must cost one skipped result, never the watcher.
    """
    try:
        return format_result(result)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        log.warning("ignoring result %s that cannot be printed: %s: %s", result.get("frame_id"),
                    type(exc).__name__, str(exc)[:200])
        return None


def format_defect(d: dict) -> str:
    area = f"area {d['area_px']} px" + (f" ({d['area_mm2']:.2f} mm2)" if "area_mm2" in d else "")
    scores = f" score mean {d['mean_score']:.3f} max {d['max_score']:.3f}" if "mean_score" in d else ""
    return (f"{area} bbox {d['bbox']} centroid {d['centroid']} orientation {d['orientation_deg']:.1f} deg "
            f"axes {d['major_axis_px']:.1f} x {d['minor_axis_px']:.1f} px{scores}")


def watch(settings: Settings, stop_event: threading.Event, camera: str | None = None, count: int | None = None,
          timeout_s: float | None = None, out: Callable[[str], None] = print,
          bad: collections.Counter | None = None) -> int:
    """Print results until stopped, `count` results, or `timeout_s`; returns how many were printed.

    Messages it ignores are counted in `bad` by kind (a MessageError kind, or "unprintable")."""
    bad = bad if bad is not None else collections.Counter()
    seen = 0
    for result, _mask in results(settings, stop_event, camera, timeout_s, on_bad=lambda kind: bad.update([kind])):
        if (lines := printable(result)) is None:
            bad.update(["unprintable"])
            continue
        for line in lines:
            out(line)
        seen += 1
        if count is not None and seen >= count:
            break
    return seen
