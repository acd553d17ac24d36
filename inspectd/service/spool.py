"""A bounded on-disk spool of flagged frames waiting for their result (the ack).

Each entry is one file `<sequence>_<frame_id>.frame` holding the multipart message. It is
written to a temporary name, fsynced and renamed, so a crash leaves either a whole entry or a
`.tmp` file that the next start deletes. Entries leave only on ack or, when the spool is full,
by the configured policy:

- `drop_oldest`: the oldest waiting frames are dropped to make room (the line's newest frames
  matter most on a running line);
- `reject_new`: the new frame is not spooled (what is already waiting is kept).

Either way every dropped or rejected frame is passed to `on_drop(reason, frame_id)` (a metric
and a log line in the daemon): never a silent drop. The disk itself may fail: a full disk
(ENOSPC) makes room by the same policy, and a write that still fails (ENOSPC, a read-only or
broken disk) drops the new frame as `spool_disk_full` / `spool_write_failed`, leaves no
temporary file, and never raises: the line goes on, losing only what cannot be stored.

A frame the refiners cannot finish (their refinement failed max_attempts times, or a refiner
died on it that often) is moved to the dead-letter folder beside the spool with a small JSON
note saying why, and reported through `on_dead_letter(reason, frame_id)`. Thread-safe: the
capture loop adds, the transport thread sends, acks and resends.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from inspectd.errors import ConfigError

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
    token: str = ""  # the frame's ack_token: only a result echoing it acks the frame
    failures: int = 0  # refiners that died while working on it (seen through their heartbeats)


class Spool:
    def __init__(self, directory: str | Path, max_frames: int, max_bytes: int, ack_timeout_s: float,
                 full_policy: str = "drop_oldest", on_drop: Callable[[str, str], None] | None = None,
                 dead_letter_dir: str | Path | None = None,
                 on_dead_letter: Callable[[str, str], None] | None = None):
        if full_policy not in ("drop_oldest", "reject_new"):
            raise ValueError(f"unknown spool full_policy {full_policy!r}")
        self.dir = Path(directory)
        self.dead_dir = Path(dead_letter_dir) if dead_letter_dir else default_dead_letter_dir(self.dir)
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.ack_timeout_s, self.full_policy = ack_timeout_s, full_policy
        self.on_drop = on_drop or (lambda reason, frame_id: None)
        self.on_dead_letter = on_dead_letter or (lambda reason, frame_id: None)
        self.entries: dict[str, Entry] = {}  # insertion order = oldest first
        self.bytes = 0
        self.disk_ok = True  # False since the last write failed, until one succeeds
        self.lock = threading.Lock()
        self.sequence = time.time_ns()  # file names sort in spooling order, across restarts too
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"spool.dir {self.dir}: cannot create it ({exc.strerror or exc})") from None
        self._reload()

    def check_writable(self) -> None:
        """Write, fsync and delete a probe file: a ConfigError naming the folder if that fails."""
        for folder in (self.dir, self.dead_dir):
            probe = folder / ".write-probe.tmp"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                write_entry(probe, [b"probe"])
                probe.unlink()
            except OSError as exc:
                raise ConfigError(f"spool folder {folder} is not writable ({exc.strerror or exc})") from None

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
    def put(self, frame_id: str, parts: list[bytes], token: str = "") -> bool:
        """Spool a message durably (its header carries `token`); False when the full policy rejected it."""
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
            if not self._write(path, parts, frame_id):
                return False
            self.entries[frame_id] = Entry(frame_id, path, size, token=token, spooled_at=time.time())
            self.bytes += size
            return True

    def dead_letter(self, frame_id: str, reason: str, detail: str = "") -> bool:
        """Move a frame the refiners cannot finish to the dead-letter folder; False if not spooled.

        The entry leaves the spool even when the move fails (a broken disk): it is never sent again.
        """
        with self.lock:
            entry = self.entries.pop(frame_id, None)
            if entry is None:
                return False
            self.bytes -= entry.size
            note = {"frame_id": frame_id, "reason": reason, "detail": detail[:2000], "attempts": entry.attempts,
                    "refiner_deaths": entry.failures, "dead_lettered_at": time.time()}
            try:
                self.dead_dir.mkdir(parents=True, exist_ok=True)
                os.replace(entry.path, self.dead_dir / entry.path.name)
                (self.dead_dir / (entry.path.name + ".json")).write_text(json.dumps(note))
                self._prune_dead_letters()
            except OSError as exc:
                log.error("spool %s: cannot move frame %s to %s (%s)", self.dir, frame_id, self.dead_dir,
                          exc.strerror or exc)
                self._remove(entry, count_bytes=False)
        log.error("frame %s dead-lettered (%s%s): %s", frame_id, reason, f": {detail[:200]}" if detail else "",
                  self.dead_dir)
        self.on_dead_letter(reason, frame_id)
        return True

    def record_failure(self, frame_id: str) -> int:
        """A refiner died while working on this frame; returns how often that happened (0: not spooled)."""
        with self.lock:
            entry = self.entries.get(frame_id)
            if entry is None:
                return 0
            entry.failures += 1
            return entry.failures

    def resend_now(self) -> int:
        """Make every frame already sent due again (its refiner is gone); returns how many."""
        with self.lock:
            sent = [e for e in self.entries.values() if e.sent_at is not None]
            for entry in sent:
                entry.sent_at = None
            return len(sent)

    def mark_sent(self, frame_id: str, now: float) -> None:
        with self.lock:
            entry = self.entries.get(frame_id)
            if entry is not None:
                entry.sent_at, entry.attempts = now, entry.attempts + 1

    def holds(self, frame_id: str, token: str = "") -> bool:
        """The frame is spooled and `token` is its own: a result for it came from its refiner."""
        with self.lock:
            entry = self.entries.get(frame_id)
            return entry is not None and hmac.compare_digest(entry.token, token)

    def ack(self, frame_id: str, token: str = "") -> bool:
        """Remove an entry whose result was seen; False when it was not (or no longer) spooled,
        or when `token` is not the frame's own (a result from anyone but the refiner holding it)."""
        with self.lock:
            entry = self.entries.get(frame_id)
            if entry is None or not hmac.compare_digest(entry.token, token):
                return False
            del self.entries[frame_id]
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

    def _write(self, path: Path, parts: list[bytes], frame_id: str) -> bool:
        """Write one entry; on a full disk make room by the policy; False (counted) when it cannot."""
        while True:
            try:
                write_entry(path, parts)
                self.disk_ok = True
                return True
            except OSError as exc:
                self.disk_ok = False
                error = exc
            if error.errno != errno.ENOSPC or self.full_policy != "drop_oldest" or not self.entries:
                break
            oldest = self.entries.pop(next(iter(self.entries)))  # the disk is full: free the oldest frame
            self._remove(oldest)
            self._drop("spool_full_dropped_oldest", oldest.frame_id, "disk full")
        reason = "spool_disk_full" if error.errno == errno.ENOSPC else "spool_write_failed"
        self._drop(reason, frame_id, error.strerror or str(error))
        return False

    def _drop(self, reason: str, frame_id: str, detail: str = "") -> None:
        policy = "" if reason == "spool_entry_too_large" else f" (full_policy={self.full_policy})"
        detail = f": {detail}" if detail else ""
        log.warning("spool %s: dropped frame %s: %s%s%s", self.dir, frame_id, reason, detail, policy)
        self.on_drop(reason, frame_id)

    def _prune_dead_letters(self) -> None:
        """Keep the newest max_frames dead letters: a stream of bad frames cannot fill the disk."""
        frames = sorted(self.dead_dir.glob(f"*{SUFFIX}"))
        for old in frames[: max(len(frames) - self.max_frames, 0)]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".json").unlink(missing_ok=True)
            log.warning("dead-letter folder %s: removed the oldest, %s (keeps %d)", self.dead_dir, old.name,
                        self.max_frames)

    def _remove(self, entry: Entry, count_bytes: bool = True) -> None:
        if count_bytes:
            self.bytes -= entry.size
        try:
            entry.path.unlink(missing_ok=True)
        except OSError as exc:  # a read-only disk: the file stays, and is resent (a duplicate) after a restart
            log.warning("spool %s: cannot delete %s (%s)", self.dir, entry.path.name, exc.strerror or exc)

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
            self.entries[frame_id] = Entry(frame_id, path, sum(len(p) for p in parts), token=ack_token_of(parts),
                                           spooled_at=path.stat().st_mtime)
            self.bytes += self.entries[frame_id].size
            self.sequence = max(self.sequence, int(sequence))
        if self.entries:
            log.info("spool %s: %d frame(s) from a previous run will be resent", self.dir, len(self.entries))


def ack_token_of(parts: list[bytes]) -> str:
    """The ack_token in a spooled frame's header (part 0); "" for entries spooled without one."""
    try:
        token = json.loads(parts[0]).get("ack_token", "")
    except (ValueError, AttributeError, IndexError):
        return ""
    return token if isinstance(token, str) else ""


def default_dead_letter_dir(spool_dir: Path) -> Path:
    """`<spool>-dead-letter` beside the spool folder (same disk, so a move is a rename)."""
    return spool_dir.with_name(spool_dir.name + "-dead-letter")


def write_entry(path: Path, parts: list[bytes]) -> None:
    """Write durably (temporary file, fsync, rename); on any error nothing is left behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(parts)))
            for part in parts:
                f.write(struct.pack("<Q", len(part)))
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        fsync_dir(path.parent)  # make the rename itself durable
    except OSError:
        for leftover in (tmp, path):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only disk: there is nothing to remove either
        raise


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
