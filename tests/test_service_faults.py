"""Faults that must not stop the line (issue 13): full and read-only spool disks, unreadable
folder images, frames and messages that make a loop raise, refinements that fail, refiners that
die on a frame, a sender thread that dies, failing CURVE handshakes, bad model bundles.

Real files, real sockets on 127.0.0.1, real processes where a death matters. Disks are a small
tmpfs (remounted read-only for EROFS); those tests skip, saying why, where mounting is not allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import struct
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest

from inspectd.data.images import write_image
from inspectd.errors import ConfigError
from inspectd.service.capture import Frame, open_source
from inspectd.service.capture_process import run_capture
from inspectd.service.lifecycle import reload_model
from inspectd.service.messages import MessageError, encode_frame, encode_result
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.refiner_process import run_refiner
from inspectd.service.sdnotify import Notifier
from inspectd.service.settings import CaptureSettings
from inspectd.service.spool import Spool
from inspectd.service.transport import Transport, make_keypair
from inspectd.service.watch import watch

from test_service_doubles import (DEMO_TINT, ColourAxisScreenerDouble, ThresholdRefinerDouble, service_settings,
                                  start_thread, wait_until)
from test_service_pipeline import RawSubscriber, frame_parts

HERE = Path(__file__).resolve().parent
PARTS = [b'{"frame_id": "f"}', b"\x89PNG" + bytes(3000)]


# --- disks -------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs at tmp_path/disk; yields (path, remount_read_only)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {mount.stderr.strip()}")

    def read_only():
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)

    try:
        yield disk, read_only
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def counting_spool(directory: Path, drops: list, policy: str = "reject_new") -> Spool:
    return Spool(directory, max_frames=1000, max_bytes=10**9, ack_timeout_s=5.0, full_policy=policy,
                 on_drop=lambda reason, frame_id: drops.append((reason, frame_id)))


def test_a_full_disk_turns_puts_into_counted_drops_without_temporary_files(tiny_disk):
    disk, _ = tiny_disk
    drops = []
    spool = counting_spool(disk / "spool", drops)
    stored = [f"f{i}" for i in range(40) if spool.put(f"f{i}", PARTS)]
    assert 3 < len(stored) < 40  # the disk, not the spool's limits, stopped it
    assert {reason for reason, _ in drops} == {"spool_disk_full"} and len(drops) == 40 - len(stored)
    assert not list((disk / "spool").glob("*.tmp")) and not spool.disk_ok
    assert spool.ack(stored[0]) and spool.put("after-ack", PARTS) and spool.disk_ok  # room again: stored


def test_drop_oldest_makes_room_on_a_full_disk(tiny_disk):
    disk, _ = tiny_disk
    drops = []
    spool = counting_spool(disk / "spool", drops, policy="drop_oldest")
    for i in range(40):
        assert spool.put(f"f{i}", PARTS)  # the newest frame is always kept
    assert "f39" in spool and "f0" not in spool
    assert {reason for reason, _ in drops} == {"spool_full_dropped_oldest"} and len(drops) == 40 - len(spool)
    assert not list((disk / "spool").glob("*.tmp"))


def test_a_read_only_spool_is_refused_before_ready_and_counted_at_run_time(tiny_disk):
    disk, read_only = tiny_disk
    drops = []
    spool = counting_spool(disk / "spool", drops)
    assert spool.put("before", PARTS)
    read_only()
    assert not spool.put("after", PARTS) and drops == [("spool_write_failed", "after")]
    assert spool.ack("before")  # the file stays on the read-only disk; the spool goes on
    with pytest.raises(ConfigError, match=r"spool folder .*spool is not writable \(Read-only file system\)"):
        spool.check_writable()


class RecordingNotifier(Notifier):
    def __init__(self):
        super().__init__({})
        self.sent = []

    def notify(self, *lines):
        self.sent.extend(lines)
        return True


def test_capture_does_not_report_ready_on_a_read_only_spool(tiny_disk, tmp_path):
    disk, read_only = tiny_disk
    (disk / "spool").mkdir()
    read_only()
    settings = service_settings(tmp_path, spool={"dir": str(disk / "spool")})
    notifier, screen = RecordingNotifier(), ColourAxisScreenerDouble()
    with pytest.raises(ConfigError, match="not writable"):
        run_capture(settings, screen, threading.Event(), threshold=screen.threshold, notifier=notifier)
    assert "READY=1" not in notifier.sent


def test_capture_on_a_disk_that_fills_keeps_screening_and_counts_drops(tiny_disk, tmp_path):
    disk, _ = tiny_disk
    settings = service_settings(tmp_path, spool={"dir": str(disk / "spool"), "full_policy": "reject_new"},
                                capture={"max_frames": 60, "demo": {"defect_rate": 1.0, "seed": 4}})
    stop, metrics, screen = threading.Event(), ServiceMetrics("capture"), ColourAxisScreenerDouble()
    seen = []

    def on_frame(frame, flagged):
        seen.append(flagged)
        if len(seen) == 60:
            stop.set()  # no refiner: stop instead of waiting for acks

    summary = run_capture(settings, screen, stop, threshold=screen.threshold, metrics=metrics, on_frame=on_frame)
    dropped = metrics.drops.labels("spool_disk_full")._value.get()
    assert summary["frames"] == 60 and summary["flagged"] == sum(seen) > 20
    assert dropped > 0 and summary["spooled"] + dropped == summary["flagged"]
    assert not list((disk / "spool").glob("*.tmp"))


# --- folder source -----------------------------------------------------------------------------
def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header declares width x height (no real pixels behind it)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(300))) + \
        chunk(b"IEND", b"")


def test_folder_source_skips_unreadable_images_and_remembers_what_it_read(tmp_path):
    folder = tmp_path / "line"
    folder.mkdir()
    (folder / "a-huge.png").write_bytes(png_declaring(40000, 40000))  # cv2.error before the fix
    (folder / "b-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    for i in range(3):
        write_image(folder / f"c{i}.png", np.full((20, 20, 3), i / 4, np.float32))
    settings = CaptureSettings(source="folder", uri=str(folder), size=16)
    journal = tmp_path / "spool-folder-read.txt"

    def read_all():
        errors = []
        frames = [f for f in open_source(settings, "cam0", threading.Event(), errors.append, journal) if f]
        return frames, errors

    first, errors = read_all()
    assert [f.source for f in first] == ["c0.png", "c1.png", "c2.png"] and errors == ["bad_frame", "bad_frame"]
    again, errors = read_all()  # a restart: nothing is read twice, nothing counted twice
    assert again == [] and errors == []
    write_image(folder / "d.png", np.ones((20, 20, 3), np.float32))
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:3]))  # a crash lost c1 and c2's lines
    later, _ = read_all()
    assert [f.source for f in later] == ["c1.png", "c2.png", "d.png"]
    assert [f.id for f in later[:2]] == [f.id for f in first[1:]]  # read again under the same ids


def test_folder_jpeg_and_pgm_images_are_size_checked_from_their_headers(tmp_path, monkeypatch):
    """A JPEG and a PGM declaring 10000x10000 are skipped and counted without being decoded."""
    import cv2

    from test_images import jpeg_declaring, pgm_declaring

    folder = tmp_path / "line"
    folder.mkdir()
    (folder / "a-huge.jpg").write_bytes(jpeg_declaring(10000, 10000))
    (folder / "b-huge.pgm").write_bytes(pgm_declaring(10000, 10000))
    write_image(folder / "c-good.png", np.full((20, 20, 3), 0.5, np.float32))
    decoded, real_decode = [], cv2.imdecode

    def spy(buf, flags):
        image = real_decode(buf, flags)
        decoded.append(image.shape[:2])
        return image

    monkeypatch.setattr(cv2, "imdecode", spy)
    errors = []
    settings = CaptureSettings(source="folder", uri=str(folder), size=16)
    frames = [f for f in open_source(settings, "cam0", threading.Event(), errors.append) if f]
    assert [f.source for f in frames] == ["c-good.png"] and errors == ["bad_frame", "bad_frame"]
    assert decoded == [(20, 20)]  # only the good image was ever decoded


def test_a_source_that_raises_is_counted_and_opened_again(monkeypatch):
    import inspectd.service.capture as capture

    calls = []
    real = capture.demo_line

    def flaky(settings, camera, stop):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("camera driver fell over")
        yield from real(settings, camera, stop)

    monkeypatch.setattr(capture, "demo_line", flaky)
    settings = CaptureSettings(source="demo", size=16, max_frames=3, reconnect_initial_s=0.01)
    errors = []
    frames = [f for f in open_source(settings, "cam0", threading.Event(), errors.append) if f]
    assert len(frames) == 3 and errors == ["source_failed"] and len(calls) == 2


# --- the refiner -------------------------------------------------------------------------------
class FailingRefiner(ThresholdRefinerDouble):
    """Test double: raises for the first `failures` calls per frame (failures=None: always)."""

    def __init__(self, failures: int | None):
        super().__init__()
        self.failures, self.calls = failures, {}

    def __call__(self, image, header):
        n = self.calls[header["frame_id"]] = self.calls.get(header["frame_id"], 0) + 1
        if self.failures is None or n <= self.failures:
            raise RuntimeError(f"CUDA out of memory (call {n})")
        return super().__call__(image, header)


def defect_frame_parts(frame_id: str, **over) -> list[bytes]:
    """A 32x32 frame message with one pasted defect (so the result has measurements)."""
    header = json.loads(frame_parts(frame_id, **over)[0])
    image = np.ones((32, 32, 3), np.float32) * 0.5 * np.asarray(DEMO_TINT, np.float32)
    image[8:16, 8:16] = (0.1, 0.9, 0.2)
    return encode_frame({k: v for k, v in header.items() if k not in ("schema", "width", "height", "encoding")},
                        image)


def start_refiner(settings, refine, metrics) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    return start_thread(run_refiner, settings, refine, stop, metrics=metrics, image_size=(32, 32)), stop


def test_refinement_is_retried_then_published_as_error_and_bad_messages_never_end_the_loop(tmp_path):
    settings = service_settings(tmp_path)
    metrics = ServiceMetrics("refiner")
    refine, refine_ok_on_second, refine_ok = FailingRefiner(None), FailingRefiner(1), FailingRefiner(0)
    doubles = {"always-fails": refine, "fails-once": refine_ok_on_second}
    refiner, stop = start_refiner(settings, lambda image, header: doubles.get(header["frame_id"], refine_ok)(
        image, header), metrics)
    test_side = Transport(settings.transport)
    push = test_side.frames_push()
    subscriber = RawSubscriber(settings)
    try:
        good = frame_parts("good-after")
        push.send_multipart([b"[" * 100_000, good[1]])  # once a RecursionError: now refused for its size
        push.send_multipart(defect_frame_parts("tiny-scale", px_per_mm=1e-200))  # infinite mm2: refused at parse
        push.send_multipart(frame_parts("always-fails"))
        push.send_multipart(frame_parts("fails-once", size=(32, 32)))
        push.send_multipart(good)
        assert wait_until(lambda: len(subscriber.messages) == 3, 15), subscriber.messages
        by_id = {m["frame_id"]: m for m in subscriber.messages}
        assert by_id["always-fails"]["decision"] == "error"
        assert "refinement failed 3 time(s): CUDA out of memory" in by_id["always-fails"]["error"]
        assert refine.calls["always-fails"] == 3 and refine_ok_on_second.calls["fails-once"] == 2
        assert by_id["fails-once"]["decision"] == "ok" and by_id["good-after"]["decision"] == "ok"
        assert metrics.refinement_failures._value.get() == 4
        bad = {kind: metrics.bad_inputs.labels(kind)._value.get() for kind in ("oversized", "malformed")}
        assert bad == {"oversized": 1, "malformed": 1}  # the huge header; px_per_mm out of its range
        assert metrics.loop_errors.labels("refiner")._value.get() == 0 and refiner.is_alive()
    finally:
        stop.set()
        refiner.join(10)
        subscriber.close()
        test_side.close()


# --- the capture: results, dead letters, heartbeats, a dying sender ------------------------------
def flagged_frames(n: int, camera: str = "testcam", poison: set[int] = frozenset()) -> list[Frame]:
    """Frames the screener double flags (a pasted square off the tint axis); `poison` ones are pure red."""
    frames = []
    rng = np.random.default_rng(0)
    for i in range(n):
        image = np.ones((32, 32, 3), np.float32) * np.asarray(DEMO_TINT, np.float32) * rng.uniform(0.3, 0.7)
        image[4:12, 4:12] = (0.1, 0.9, 0.2)
        if i in poison:
            image[:] = (1.0, 0.0, 0.0)
        frames.append(Frame(f"{camera}-{uuid.uuid4().hex[:8]}-{i:03d}", camera, time.time(), image))
    return frames


def test_a_frame_whose_refinement_fails_is_dead_lettered_not_resent(tmp_path):
    settings = service_settings(tmp_path, refiner={"max_attempts": 2})
    refiner_metrics, capture_metrics = ServiceMetrics("refiner"), ServiceMetrics("capture")
    frames = flagged_frames(4)
    bad_id = frames[1].id
    double = FailingRefiner(failures=0)

    def refine(image, header):
        if header["frame_id"] == bad_id:
            raise ValueError("F2PAD diverged")
        return double(image, header)

    refiner, stop = start_refiner(settings, refine, refiner_metrics)
    screen = ColourAxisScreenerDouble()
    try:
        summary = run_capture(settings, screen, threading.Event(), threshold=screen.threshold, frames=iter(frames),
                              metrics=capture_metrics)
    finally:
        stop.set()
        refiner.join(10)
    dead = tmp_path / "spool-dead-letter"
    assert summary == {"frames": 4, "flagged": 4, "spooled": 4, "unacked": 0}
    assert [p.name.split("_", 1)[1] for p in dead.glob("*.frame")] == [f"{bad_id}.frame"]
    note = json.loads(next(dead.glob("*.json")).read_text())
    assert note["reason"] == "refinement_failed" and "F2PAD diverged" in note["detail"]
    assert capture_metrics.dead_letters.labels("refinement_failed")._value.get() == 1
    assert capture_metrics.resends._value.get() == 0 and capture_metrics.acks._value.get() == 4


def start_refiner_process(settings, tmp_path: Path, name: str) -> subprocess.Popen:
    path = tmp_path / f"{name}.json"
    path.write_text(settings.model_dump_json())
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, str(HERE / "test_service_doubles.py"), "refiner", str(path)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "DOUBLE_POISON": "1"})


def test_a_frame_that_kills_refiners_is_dead_lettered_and_deaths_are_seen_in_seconds(tmp_path):
    """The refiner double dies (SIGKILL) on pure-red frames; a supervisor restarts it, as systemd would.

    ack_timeout_s is 60 s, so the resend can only come early from the heartbeats: the capture
    must notice the death within seconds of the process ending (starting a refiner process, its
    imports, takes longer than that on a busy machine, so the test times the detection itself).
    One death is enough here; counting up to max_attempts is the next test's.
    """
    settings = service_settings(tmp_path, spool={"ack_timeout_s": 60.0}, refiner={"max_attempts": 1},
                                transport={"heartbeat_s": 0.2, "pub_grace_s": 0.3})
    metrics, screen = ServiceMetrics("capture"), ColourAxisScreenerDouble()
    frames = flagged_frames(6, poison={2})
    starts, events, supervising = [], {}, threading.Event()
    supervising.set()

    def supervise():
        while supervising.is_set():
            if not starts or starts[-1].poll() is not None:
                if starts:
                    events.setdefault("died", time.monotonic())
                starts.append(start_refiner_process(settings, tmp_path, f"refiner-{len(starts)}"))
            if metrics.refiners_lost._value.get() and "lost" not in events:
                events["lost"] = time.monotonic()
            time.sleep(0.02)

    supervisor = start_thread(supervise)
    subscriber = RawSubscriber(settings)
    try:
        summary = {}
        capture = start_thread(lambda: summary.update(run_capture(settings, screen, threading.Event(),
                                                                  threshold=screen.threshold, frames=iter(frames),
                                                                  metrics=metrics)))
        capture.join(150)
        assert not capture.is_alive(), [(tmp_path / f"refiner-{i}.log").read_text() for i in range(len(starts))]
        assert summary["unacked"] == 0 and events["lost"] - events["died"] < 5  # 3 missed beats of 0.2 s
        dead = list((tmp_path / "spool-dead-letter").glob("*.frame"))
        assert [p.name.split("_", 1)[1] for p in dead] == [f"{frames[2].id}.frame"]
        assert metrics.dead_letters.labels("refiner_died")._value.get() == 1
        assert metrics.refiners_lost._value.get() >= 1 and len(starts) >= 2
        assert metrics.resends._value.get() >= 1  # sent again long before ack_timeout_s
        published = {m["frame_id"] for m in subscriber.messages}
        assert published == {f.id for i, f in enumerate(frames) if i != 2}
    finally:
        supervising.clear()
        supervisor.join(5)
        subscriber.close()
        for proc in starts:
            if proc.poll() is None:
                proc.kill()  # a clean stop is not what this test is about
                proc.wait(10)


def test_refiner_deaths_on_one_frame_are_counted_up_to_max_attempts(tmp_path):
    """A fake refiner on test sockets: each incarnation announces the poison frame, then falls silent
    (dies); the next incarnation takes over under a new identity. Good frames are answered."""
    from inspectd.service.heartbeat import encode_heartbeat

    settings = service_settings(tmp_path, spool={"ack_timeout_s": 60.0}, transport={"heartbeat_s": 0})
    metrics, screen = ServiceMetrics("capture"), ColourAxisScreenerDouble()
    frames = flagged_frames(3, poison={1})
    fake = Transport(settings.transport)
    pub, pull = fake.results_pub(), fake.frames_pull()
    stop, incarnation = threading.Event(), [0]

    def fake_refiner():
        last_beat = 0.0
        while not stop.is_set():
            name = f"fake:{incarnation[0]}"
            if time.monotonic() - last_beat > 0.1:
                pub.send_multipart(encode_heartbeat(name, None, 0.1))
                last_beat = time.monotonic()
            if not pull.poll(20):
                continue
            header = json.loads(pull.recv_multipart()[0])
            if header["frame_id"] == frames[1].id:
                pub.send_multipart(encode_heartbeat(name, header["frame_id"], 0.1))
                stop.wait(0.5)  # silent: this incarnation is dead
                incarnation[0] += 1
                continue
            pub.send_multipart(ok_result(header))

    thread = start_thread(fake_refiner)
    started = time.monotonic()
    try:
        summary = run_capture(settings, screen, threading.Event(), threshold=screen.threshold, frames=iter(frames),
                              metrics=metrics)
    finally:
        stop.set()
        thread.join(5)
        fake.close()
    assert summary["unacked"] == 0 and time.monotonic() - started < 20
    assert incarnation[0] == 3 and metrics.refiners_lost._value.get() == 3  # max_attempts defaults to 3
    note = json.loads(next((tmp_path / "spool-dead-letter").glob("*.json")).read_text())
    assert note["frame_id"] == frames[1].id and note["reason"] == "refiner_died" and note["refiner_deaths"] == 3
    assert metrics.acks._value.get() == 2


def ok_result(header: dict) -> list[bytes]:
    """A genuine refiner's 'ok' answer: it echoes the frame's ack_token, so the capture acks it."""
    result = {"frame_id": header["frame_id"], "camera": "testcam", "timestamps": {"captured": 0.0},
              "image_score": 1.0, "decision": "ok", "defects": [],
              "refinement": {"seconds": 0.1, "iterations": 1, "device": "cpu"}, "model_id": "m",
              "ack_token": header["ack_token"]}
    return encode_result(result, np.zeros((32, 32), bool))


def test_one_result_message_cannot_stop_the_acks(tmp_path):
    """The refiner is a test socket here, so it can publish what a broken or hostile refiner would."""
    from inspectd.service.heartbeat import HEARTBEAT_TOPIC

    settings = service_settings(tmp_path, transport={"heartbeat_s": 0})
    metrics, screen = ServiceMetrics("capture"), ColourAxisScreenerDouble()
    frames = flagged_frames(2)
    fake = Transport(settings.transport)
    pub, pull = fake.results_pub(), fake.frames_pull()
    stop = threading.Event()

    def fake_refiner():
        answered = set()
        while not stop.is_set():
            if pull.poll(50):
                header = json.loads(pull.recv_multipart()[0])
                pub.send_multipart([b"defect.testcam", b"[" * 100_000, b""])  # RecursionError before the fix
                pub.send_multipart([HEARTBEAT_TOPIC, b"{" * 5000])  # a bad heartbeat too
                if header["frame_id"] not in answered:
                    answered.add(header["frame_id"])
                    pub.send_multipart(ok_result(header))

    thread = start_thread(fake_refiner)
    try:
        summary = run_capture(settings, screen, threading.Event(), threshold=screen.threshold, frames=iter(frames),
                              metrics=metrics)
    finally:
        stop.set()
        thread.join(5)
        fake.close()
    assert summary["unacked"] == 0 and metrics.acks._value.get() == 2
    counted = (metrics.loop_errors.labels("ack_reader")._value.get()
               + metrics.bad_inputs.labels("malformed")._value.get())
    assert counted >= 4  # two bad results and two bad heartbeats, each counted once


def test_a_dead_sender_thread_ends_the_capture_with_an_error(tmp_path, monkeypatch):
    from inspectd.service.lifecycle import ThreadDied

    def broken(self, now):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Spool, "due_for_resend", broken)
    settings = service_settings(tmp_path, capture={"fps": 20})
    metrics, screen = ServiceMetrics("capture"), ColourAxisScreenerDouble()
    metrics.serve("127.0.0.1", 0)
    started = time.monotonic()
    try:
        with pytest.raises(ThreadDied, match=r"thread frame-sender died \(OSError: \[Errno 5\] Input/output error\)"):
            run_capture(settings, screen, threading.Event(), threshold=screen.threshold, metrics=metrics)
        assert time.monotonic() - started < 15
        assert metrics.up.labels("capture")._value.get() == 0
        assert metrics.loop_errors.labels("sender")._value.get() >= 50
    finally:
        metrics.stop()


def test_the_capture_process_exits_non_zero_when_its_sender_dies(tmp_path):
    settings = service_settings(tmp_path)
    path = tmp_path / "capture.json"
    path.write_text(settings.model_dump_json())
    run = subprocess.run([sys.executable, str(HERE / "test_service_doubles.py"), "capture", str(path)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "DOUBLE_BREAK_SENDER": "1"})
    assert run.returncode != 0 and "thread frame-sender died" in run.stderr, run.stderr[-2000:]


def test_heartbeats_parse_strictly_and_track_refiners():
    from inspectd.service.heartbeat import HEARTBEAT_TOPIC, RefinerTracker, encode_heartbeat, parse_heartbeat

    beat = parse_heartbeat(encode_heartbeat("host:1:tcp://x", "cam-1", 0.5))
    assert beat == {"refiner": "host:1:tcp://x", "busy": "cam-1", "interval_s": 0.5, "stopping": False}
    for parts in ([HEARTBEAT_TOPIC], [HEARTBEAT_TOPIC, b"[1]"], [HEARTBEAT_TOPIC, b'{"refiner": 3}'],
                  [HEARTBEAT_TOPIC, b'{"refiner": "r", "busy": "../x", "interval_s": 1}'],
                  [HEARTBEAT_TOPIC, b'{"refiner": "r", "busy": null, "interval_s": 1e400}']):
        with pytest.raises(MessageError):
            parse_heartbeat(parts)
    tracker = RefinerTracker()
    assert tracker.seen(beat, 100.0) and not tracker.seen(beat, 100.5)
    assert tracker.lost(101.9) == [] and tracker.lost(102.1) == [("host:1:tcp://x", "cam-1")] and len(tracker) == 0
    tracker.seen(beat, 200.0)
    tracker.seen(parse_heartbeat(encode_heartbeat("host:1:tcp://x", None, 0.5, stopping=True)), 200.1)
    assert tracker.lost(300.0) == []  # a clean stop is not a death


# --- results for operators -----------------------------------------------------------------------
def test_watch_survives_a_result_it_cannot_print(tmp_path):
    settings = service_settings(tmp_path)
    fake = Transport(settings.transport)
    pub = fake.results_pub()
    lines, stop = [], threading.Event()
    result = {"frame_id": "f1", "camera": "testcam", "timestamps": {}, "image_score": 10**400, "decision": "ok",
              "defects": [], "refinement": {"seconds": 0.1, "iterations": 1, "device": ""}, "model_id": "m"}
    watcher = start_thread(lambda: watch(settings, stop, count=1, timeout_s=20, out=lines.append))
    try:
        deadline = time.monotonic() + 15
        while watcher.is_alive() and time.monotonic() < deadline:
            pub.send_multipart(encode_result(result, np.zeros((8, 8), bool)))  # OverflowError before the fix
            pub.send_multipart(encode_result({**result, "frame_id": "f2", "image_score": 0.5},
                                             np.zeros((8, 8), bool)))
            time.sleep(0.2)
        watcher.join(5)
        assert not watcher.is_alive() and len(lines) == 1
        assert lines[0].startswith("testcam f")  # printed, or said it could not be printed, and went on
    finally:
        stop.set()
        fake.close()


# --- CURVE ---------------------------------------------------------------------------------------
def test_failed_curve_handshakes_are_counted_and_backed_off(tmp_path):
    keys = tmp_path / "keys"
    for name in ("refiner", "capture", "stranger"):
        make_keypair(keys, name)
    (keys / "clients").mkdir()  # the refiner trusts nobody: every handshake fails
    base = service_settings(tmp_path, transport={"heartbeat_s": 0})

    def with_curve(own, server):
        curve = {"secret_key": keys / f"{own}.key_secret", "server_public_key": keys / f"{server}.key",
                 "authorized_clients": keys / "clients"}
        return base.model_copy(update={"transport": base.transport.model_copy(
            update={"curve": base.transport.curve.model_validate(curve)})})

    stop = threading.Event()
    refiner_metrics = ServiceMetrics("refiner")
    refiner = start_thread(run_refiner, with_curve("refiner", "stranger"), ThresholdRefinerDouble(), stop,
                           metrics=refiner_metrics)
    capture_metrics, screen = ServiceMetrics("capture"), ColourAxisScreenerDouble()
    capture_stop = threading.Event()
    capture = start_thread(run_capture, with_curve("capture", "refiner"), screen, capture_stop,
                           threshold=screen.threshold, frames=idle(capture_stop), metrics=capture_metrics)
    failures = capture_metrics.handshake_failures.labels("results_sub")._value.get
    try:
        # the first two failed tries (0 and 0.5 s after the start; later on a loaded machine) ...
        assert wait_until(lambda: failures() >= 2, 60), failures()
        time.sleep(3.0)
        # ... then back-off (1, 2, 4 s): at most two more in the next 3 s, not hundreds
        assert 2 <= failures() <= 5, failures()
        assert refiner_metrics.handshake_failures.labels("results_pub")._value.get() >= 2
    finally:
        capture_stop.set()
        stop.set()
        capture.join(10)
        refiner.join(10)


def idle(stop: threading.Event):
    """A source with no frames that runs until stopped."""
    while not stop.wait(0.1):
        yield None


# --- models --------------------------------------------------------------------------------------
def test_a_failing_reload_keeps_the_old_model_whatever_it_raises():
    class Current:
        model_id = "v1"

    def reload():
        raise RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model failed")

    metrics = ServiceMetrics("capture")
    current = Current()
    assert reload_model(current, reload, metrics, Notifier({})) is current
    assert metrics.reloads.labels("failed")._value.get() == 1


def test_a_typo_in_a_refiner_model_path_does_not_fit_a_demo_model(tmp_path, monkeypatch):
    from inspectd.errors import BundleError
    from inspectd.service.models import build_refiner
    from inspectd.service.settings import load_settings

    settings_file = tmp_path / "refiner.yaml"
    settings_file.write_text(f"refiner:\n  model: {tmp_path / 'line1-patchcroe'}\n")  # no capture section
    with pytest.raises(BundleError, match="line1-patchcroe: refiner model bundle not found"):
        build_refiner(load_settings(settings_file))
    assert not (tmp_path / "line1-patchcroe").exists()
