"""Frame sources: the demo line (truth masks), image folders (watched), video files and a
camera that is missing, then appears: back-off, counted errors, never an exception."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from inspectd.data.images import write_image
from inspectd.errors import ConfigError
from inspectd.service.capture import Backoff, idle_wait, open_source, paced
from inspectd.service.settings import CaptureSettings

from test_service_doubles import start_thread, wait_until


def test_demo_line_frames_carry_truth_masks():
    settings = CaptureSettings(source="demo", size=48, max_frames=40, demo={"defect_rate": 0.5, "seed": 1})
    frames = [f for f in open_source(settings, "cam0", threading.Event()) if f is not None]
    assert len(frames) == 40 and len({f.id for f in frames}) == 40
    defective = [f for f in frames if f.truth.any()]
    assert 10 <= len(defective) <= 30
    for f in frames:
        assert f.image.shape == (48, 48, 3) and f.image.dtype == np.float32 and f.truth.shape == (48, 48)
        assert f.camera == "cam0" and f.id.startswith("cam0-")


def test_frame_ids_differ_across_restarts():
    settings = CaptureSettings(source="demo", size=32, max_frames=1)
    first = next(iter(open_source(settings, "c", threading.Event()))).id
    time.sleep(0.002)
    assert next(iter(open_source(settings, "c", threading.Event()))).id != first


def test_folder_skips_a_bad_file_and_watches_for_new_ones(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"part{i}.png", np.full((20, 30, 3), i / 3, np.float32))
    (tmp_path / "part1b.png").write_bytes(b"not an image at all")
    errors, stop, got = [], threading.Event(), []
    settings = CaptureSettings(source="folder", uri=str(tmp_path), watch=True, poll_s=0.05, size=16)

    def consume():
        for frame in open_source(settings, "cam0", stop, errors.append):
            if frame is not None:
                got.append(frame)

    thread = start_thread(consume)
    assert wait_until(lambda: len(got) == 3, 10)
    write_image(tmp_path / "zz-new.png", np.ones((20, 30, 3), np.float32))
    assert wait_until(lambda: len(got) == 4, 10)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert [f.source for f in got] == ["part0.png", "part1.png", "part2.png", "zz-new.png"]
    assert errors == ["bad_frame"] and got[0].image.shape == (16, 16, 3)


def test_folder_skips_a_png_declaring_a_huge_size_without_decoding_it(tmp_path, monkeypatch):
    """Issue 13: a 400-byte PNG declaring 40000x40000 raised cv2.error out of the source."""
    from test_images import png_with_header

    write_image(tmp_path / "a.png", np.full((20, 30, 3), 0.5, np.float32))
    (tmp_path / "b-liar.png").write_bytes(png_with_header(40000, 40000))
    write_image(tmp_path / "c.png", np.full((20, 30, 3), 0.25, np.float32))
    errors = []
    settings = CaptureSettings(source="folder", uri=str(tmp_path), size=16)
    frames = [f for f in open_source(settings, "cam0", threading.Event(), errors.append) if f is not None]
    assert [f.source for f in frames] == ["a.png", "c.png"] and errors == ["bad_frame"]


def test_folder_must_exist(tmp_path):
    settings = CaptureSettings(source="folder", uri=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="not a folder"):
        next(iter(open_source(settings, "cam0", threading.Event())))


def write_video(path, n=6, size=(40, 32)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), 40 * i, np.uint8))
    writer.release()


def test_video_file_ends_at_its_end(tmp_path):
    write_video(tmp_path / "line.avi")
    settings = CaptureSettings(source="video", uri=str(tmp_path / "line.avi"), size=None)
    frames = [f for f in open_source(settings, "cam0", threading.Event()) if f is not None]
    assert len(frames) == 6 and frames[0].image.shape == (32, 40, 3)
    assert frames[3].image.dtype == np.uint8  # a native frame stays 8 bit: float only at screening size
    assert frames[3].image.mean() == pytest.approx(120, abs=8)


def test_missing_camera_backs_off_then_connects_when_it_appears(tmp_path):
    """A stream that is not there is retried with growing delays, counted, and picked up later.

    The "camera" is a URI that does not exist yet (so it is treated as a stream, not a file);
    after a moment a video appears there and frames flow; at its end the source reconnects.
    """
    uri = tmp_path / "camera.avi"
    settings = CaptureSettings(source="video", uri=str(uri), size=None, reconnect_initial_s=0.05,
                               reconnect_max_s=0.2)
    errors, stop, got = [], threading.Event(), []

    def consume():
        for frame in open_source(settings, "cam0", stop, errors.append):
            if frame is not None:
                got.append(frame)

    thread = start_thread(consume)
    assert wait_until(lambda: len(errors) >= 3, 10)
    write_video(tmp_path / "staged.avi")
    (tmp_path / "staged.avi").rename(uri)
    assert wait_until(lambda: len(got) >= 8, 10)  # 6 frames, then reconnected and reading again
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and set(errors) == {"camera_lost"}


def test_backoff_doubles_up_to_the_maximum_and_resets():
    backoff, stop = Backoff(0.01, 0.04), threading.Event()
    delays = []
    for _ in range(4):
        delays.append(backoff.next)
        list(backoff.wait(stop))
    assert delays == [0.01, 0.02, 0.04, 0.04]
    backoff.reset()
    assert backoff.next == 0.01


def test_waits_end_at_once_on_stop():
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert list(idle_wait(30, stop)) == [] and time.monotonic() - started < 1


def test_paced_limits_the_rate():
    settings = CaptureSettings(source="demo", size=16, max_frames=6)
    started = time.monotonic()
    frames = [f for f in paced(open_source(settings, "c", threading.Event()), 50, threading.Event()) if f]
    assert len(frames) == 6 and time.monotonic() - started >= 5 / 50
