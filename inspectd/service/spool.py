"""A bounded on-disk spool of flagged frames waiting for their result (the ack).

Each entry is one file `<sequence>_<frame_id>.frame` holding the multipart message. It is
written to a temporary name, fsynced and renamed, so a crash leaves either a whole entry or a
`.tmp` file that the next start deletes. Entries leave only on ack or, when the spool is full,
by the configured policy:

- `drop_oldest`: the oldest waiting frames are dropped to make room (the line's newest frames
  matter most on a running line);
- `reject_new`: the new frame is not spooled (what is already waiting is kept).

Either way every dropped or rejected frame is passed to `on_drop(reason, frame_id)` (a metric
and a log line in the daemon): never a silent drop. Thread-safe: the capture loop adds, the
transport thread sends, acks and resends.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)
SUFFIX = ".frame"
MAX_BACKOFF = 8  # the resend timeout grows to at most 8 x ack_timeout_s
MAGIC = b"ISPL1"  # file format marker: MAGIC, part count (u32), then per part length (u64) + bytes


@dataclass
class Entry:
    frame_id: str
    path: Path
    size: int
    spooled_at: float = 0.0  # when it was written (the file's mtime after a restart)
    sent_at: float | None = None  # None: not yet sent since it was spooled or reloaded
    attempts: int = 0


class Spool:
    def __init__(self, directory: str | Path, max_frames: int, max_bytes: int, ack_timeout_s: float,
                 full_policy: str = "drop_oldest", on_drop: Callable[[str, str], None] | None = None):
        if full_policy not in ("drop_oldest", "reject_new"):
            raise ValueError(f"unknown spool full_policy {full_policy!r}")
        self.dir = Path(directory)
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.ack_timeout_s, self.full_policy = ack_timeout_s, full_policy
        self.on_drop = on_drop or (lambda reason, frame_id: None)
        self.entries: dict[str, Entry] = {}  # insertion order = oldest first
        self.bytes = 0
        self.lock = threading.Lock()
        self.sequence = time.time_ns()  # file names sort in spooling order, across restarts too
        self.dir.mkdir(parents=True, exist_ok=True)
        self._reload()

    # --- queries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, frame_id: str) -> bool:
        return frame_id in self.entries

    def due_for_resend(self, now: float) -> list[str]:
        """Frame ids never sent (new or reloaded) or unacked for their timeout, oldest first.

        The timeout is ack_timeout_s after the first send and doubles with each resend (up to
        MAX_BACKOFF times): when refiners are merely slow, duplicates stay few.
        """
        with self.lock:
            return [e.frame_id for e in self.entries.values()
                    if e.sent_at is None or now - e.sent_at >= self.timeout_for(e.attempts)]

    def timeout_for(self, attempts: int) -> float:
        return self.ack_timeout_s * min(2 ** max(attempts - 1, 0), MAX_BACKOFF)

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest waiting frame has waited for its result; 0 when none waits."""
        with self.lock:
            oldest = next(iter(self.entries.values()), None)
        return max(0.0, now - oldest.spooled_at) if oldest is not None else 0.0

    def load(self, frame_id: str) -> list[bytes] | None:
        """The spooled message parts, or None when the frame is gone (acked or dropped)."""
        with self.lock:
            entry = self.entries.get(frame_id)
        if entry is None:
            return None
        return read_entry(entry.path)

    # --- changes ---------------------------------------------------------------------------
    def put(self, frame_id: str, parts: list[bytes]) -> bool:
        """Spool a message durably; False when the full policy rejected it."""
        size = sum(len(p) for p in parts)
        with self.lock:
            if frame_id in self.entries:
                return True
            if size > self.max_bytes:
                self._drop("spool_entry_too_large", frame_id)
                return False
            if not self._make_room(size):
                self._drop("spool_full", frame_id)
                return False
            self.sequence += 1
            path = self.dir / f"{self.sequence:020d}_{frame_id}{SUFFIX}"
            write_entry(path, parts)
            self.entries[frame_id] = Entry(frame_id, path, size, spooled_at=time.time())
            self.bytes += size
            return True

    def mark_sent(self, frame_id: str, now: float) -> None:
        with self.lock:
            entry = self.entries.get(frame_id)
            if entry is not None:
                entry.sent_at, entry.attempts = now, entry.attempts + 1

    def ack(self, frame_id: str) -> bool:
        """Remove an entry whose result was seen; False when it was not (or no longer) spooled."""
        with self.lock:
            entry = self.entries.pop(frame_id, None)
            if entry is None:
                return False
            self._remove(entry)
            return True

    def attempts(self, frame_id: str) -> int:
        with self.lock:
            entry = self.entries.get(frame_id)
            return entry.attempts if entry else 0

    # --- internals -------------------------------------------------------------------------
    def _make_room(self, size: int) -> bool:
        def full() -> bool:
            return len(self.entries) + 1 > self.max_frames or self.bytes + size > self.max_bytes

        if not full():
            return True
        if self.full_policy == "reject_new":
            return False
        while full() and self.entries:
            oldest = self.entries.pop(next(iter(self.entries)))
            self._remove(oldest)
            self._drop("spool_full_dropped_oldest", oldest.frame_id)
        return True

    def _drop(self, reason: str, frame_id: str) -> None:
        policy = "" if reason == "spool_entry_too_large" else f" (full_policy={self.full_policy})"
        log.warning("spool %s: dropped frame %s: %s%s", self.dir, frame_id, reason, policy)
        self.on_drop(reason, frame_id)

    def _remove(self, entry: Entry) -> None:
        self.bytes -= entry.size
        entry.path.unlink(missing_ok=True)

    def _reload(self) -> None:
        """Take back the entries a previous run left; delete half-written temporary files."""
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            sequence, _, frame_id = path.stem.partition("_")
            parts = read_entry(path)
            if parts is None or not sequence.isdigit():
                log.warning("spool %s: removing unreadable entry %s", self.dir, path.name)
                path.unlink(missing_ok=True)
                self.on_drop("spool_corrupt", frame_id or path.name)
                continue
            self.entries[frame_id] = Entry(frame_id, path, sum(len(p) for p in parts),
                                           spooled_at=path.stat().st_mtime)
            self.bytes += self.entries[frame_id].size
            self.sequence = max(self.sequence, int(sequence))
        if self.entries:
            log.info("spool %s: %d frame(s) from a previous run will be resent", self.dir, len(self.entries))


def write_entry(path: Path, parts: list[bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(parts)))
        for part in parts:
            f.write(struct.pack("<Q", len(part)))
            f.write(part)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsync_dir(path.parent)  # make the rename itself durable


def read_entry(path: Path) -> list[bytes] | None:
    """The parts of a spool file, or None when it is missing or damaged."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        return None
    (count,), pos = struct.unpack_from("<I", data, len(MAGIC)), len(MAGIC) + 4
    parts = []
    for _ in range(count):
        if pos + 8 > len(data):
            return None
        (length,), pos = struct.unpack_from("<Q", data, pos), pos + 8
        if pos + length > len(data):
            return None
        parts.append(data[pos : pos + length])
        pos += length
    return parts if pos == len(data) else None


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
