"""Heartbeats from refiners to capture processes, so a dead refiner is noticed in seconds.

Each refiner publishes, on its PUB socket, `[b"inspectd.heartbeat", JSON]` every
transport.heartbeat_s, from a thread of its own (so it goes on during a long refinement), and at
once when it starts or finishes a frame. The JSON says who it is and which frame it works on:
`{"refiner": id, "busy": frame_id or null, "interval_s": s, "stopping": bool}`.

A capture process subscribes to the topic and keeps a RefinerTracker: a refiner silent for
HEARTBEAT_MISSES intervals is lost. Its frames are resent at once (not after ack_timeout_s),
and the frame it was busy with gets one refiner death on its record: a frame that kills
refiner.max_attempts refiners is dead-lettered instead of killing the next one. The topic does
not start with `defect.`, so result subscribers never see heartbeats.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
from dataclasses import dataclass

from inspectd.service.messages import ID_PATTERN, MessageError

log = logging.getLogger(__name__)
HEARTBEAT_TOPIC = b"inspectd.heartbeat"
HEARTBEAT_MISSES = 3  # a refiner is lost after this many intervals without a heartbeat
MAX_HEARTBEAT_BYTES = 1024


def refiner_identity(results_bind: str) -> str:
    """host, pid and endpoint: unique per refiner process, and a restart is a new refiner."""
    return f"{socket.gethostname()}:{os.getpid()}:{results_bind}"[:200]


def encode_heartbeat(refiner: str, busy: str | None, interval_s: float, stopping: bool = False) -> list[bytes]:
    body = {"refiner": refiner, "busy": busy, "interval_s": interval_s, "stopping": stopping}
    return [HEARTBEAT_TOPIC, json.dumps(body, separators=(",", ":")).encode()]


def parse_heartbeat(parts: list[bytes]) -> dict:
    """A validated heartbeat, or MessageError("malformed") naming what is wrong."""
    if len(parts) != 2 or parts[0] != HEARTBEAT_TOPIC:
        raise MessageError("malformed", f"heartbeat has {len(parts)} part(s) or another topic")
    if len(parts[1]) > MAX_HEARTBEAT_BYTES:
        raise MessageError("malformed", f"heartbeat of {len(parts[1])} bytes (at most {MAX_HEARTBEAT_BYTES})")
    try:
        body = json.loads(parts[1])
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError("malformed", f"heartbeat is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise MessageError("malformed", "heartbeat is not a JSON object")
    refiner, busy, interval = body.get("refiner"), body.get("busy"), body.get("interval_s")
    if not isinstance(refiner, str) or not 0 < len(refiner) <= 200:
        raise MessageError("malformed", "heartbeat field refiner is not a string of 1 to 200 characters")
    if busy is not None and not (isinstance(busy, str) and ID_PATTERN.match(busy)):
        raise MessageError("malformed", "heartbeat field busy is not a frame id or null")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (
            math.isfinite(interval) and 0 < interval <= 3600):
        raise MessageError("malformed", "heartbeat field interval_s is not a number of seconds in (0, 3600]")
    return {"refiner": refiner, "busy": busy, "interval_s": float(interval), "stopping": body.get("stopping") is True}


class LockedSocket:
    """One zmq socket shared by two threads: each send holds the lock (a full memory barrier, which
    is what libzmq asks for when a socket changes threads)."""

    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()

    def send_multipart(self, parts: list[bytes], **kwargs) -> None:
        with self.lock:
            self.sock.send_multipart(parts, **kwargs)


class HeartbeatSender(threading.Thread):
    """The refiner's heartbeat thread; `busy(frame_id)` / `idle()` also send one at once."""

    def __init__(self, pub: LockedSocket, refiner: str, interval_s: float):
        super().__init__(name="heartbeat", daemon=True)
        self.pub, self.refiner, self.interval_s = pub, refiner, interval_s
        self.frame_id: str | None = None
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.interval_s):
                self.send()
        except BaseException as exc:  # noticed by the main loop, which then ends the process
            log.exception("heartbeat thread died")
            self.error = exc

    def send(self, stopping: bool = False) -> None:
        self.pub.send_multipart(encode_heartbeat(self.refiner, self.frame_id, self.interval_s, stopping))

    def busy(self, frame_id: str | None) -> None:
        """Announce a change at once (a burst of bad messages, never busy, sends nothing extra)."""
        if frame_id != self.frame_id:
            self.frame_id = frame_id
            self.send()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)
        self.frame_id = None
        self.send(stopping=True)  # a clean stop is not a death


@dataclass
class RefinerState:
    last_seen: float
    interval_s: float
    busy: str | None


class RefinerTracker:
    """Which refiners are alive, from their heartbeats (pure: the caller passes the time)."""

    def __init__(self):
        self.refiners: dict[str, RefinerState] = {}

    def seen(self, heartbeat: dict, now: float) -> bool:
        """Record a heartbeat; True when this refiner is new (started, or back)."""
        name = heartbeat["refiner"]
        if heartbeat["stopping"]:
            self.refiners.pop(name, None)
            return False
        new = name not in self.refiners
        self.refiners[name] = RefinerState(now, heartbeat["interval_s"], heartbeat["busy"])
        return new

    def lost(self, now: float) -> list[tuple[str, str | None]]:
        """Refiners silent for HEARTBEAT_MISSES intervals, with the frame each was busy with; forgotten."""
        gone = [(name, state.busy) for name, state in self.refiners.items()
                if now - state.last_seen > HEARTBEAT_MISSES * state.interval_s]
        for name, _ in gone:
            del self.refiners[name]
        return gone

    def __len__(self) -> int:
        return len(self.refiners)
