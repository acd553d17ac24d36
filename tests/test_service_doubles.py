"""TEST DOUBLES for the service tests: a screener and a refiner that need no model.

They are honest (they really look at the pixels) but only work on the demo line: every normal
demo part is a grey texture times one tint, so its colours lie on the line from black through
that tint, and a pasted solid-colour defect lies off it. The per-pixel distance from that colour
axis is therefore a perfect anomaly map for the demo line, and nothing else. The shipped
daemon gets its screener (ONNX) and refiner (F2PAD) from the model bundle; these never ship.

Also here: free ports and small settings for tests, imported by the other test_service_* files.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from inspectd.service.settings import Settings
from inspectd.eval.ports import free_port

DEMO_TINT = (1.0, 0.9, 0.8)  # inspectd.data.textures.texture_parts' default tint
DOUBLE_THRESHOLD = 0.05  # 8-bit PNG rounding moves normal pixels < 0.004 off the axis


class ColourAxisScreenerDouble:
    """Test double: score map = distance of each pixel's colour from the demo tint axis."""

    model_id = "test-double-colour-axis"
    threshold = DOUBLE_THRESHOLD

    def __init__(self, tint=DEMO_TINT):
        self.axis = np.asarray(tint, np.float32) / np.linalg.norm(tint)

    def score_map(self, image: np.ndarray) -> np.ndarray:
        along = image @ self.axis
        return np.linalg.norm(image - along[..., None] * self.axis, axis=2)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        scores = self.score_map(image)
        return scores, float(scores.max())


class ThresholdRefinerDouble:
    """Test double: mask = colour-axis distance above the threshold; optional delay per frame; with
    poison=True the process kills itself (SIGKILL) on a pure red frame."""

    model_id = "test-double-threshold"

    def __init__(self, delay_s: float = 0.0, poison: bool = False):
        self.screener = ColourAxisScreenerDouble()
        self.delay_s, self.poison = delay_s, poison

    def __call__(self, image: np.ndarray, header: dict) -> tuple[np.ndarray, np.ndarray, dict]:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.poison and image[..., 1:].max() == 0:  # pure red: die as an out-of-memory kill would
            time.sleep(0.3)  # some work first (as a decompression bomb's), so heartbeats report the frame
            os.kill(os.getpid(), signal.SIGKILL)
        scores = self.screener.score_map(image)
        return scores > DOUBLE_THRESHOLD, scores, {"iterations": 1}



def service_settings(tmp_path: Path, **over) -> Settings:
    """Small, fast settings on fresh loopback ports; `over` sets top-level sections as dicts."""
    frames, results = free_port(), free_port()
    base = {
        "camera_id": "testcam",
        "capture": {"source": "demo", "size": 64, "fps": 0, "demo": {"defect_rate": 0.5, "seed": 3}},
        "transport": {"frames_bind": f"tcp://127.0.0.1:{frames}", "frames_connect": [f"tcp://127.0.0.1:{frames}"],
                      "results_bind": f"tcp://127.0.0.1:{results}",
                      "results_connect": [f"tcp://127.0.0.1:{results}"], "max_message_bytes": 200_000,
                      "pub_grace_s": 0.5},
        "spool": {"dir": str(tmp_path / "spool"), "ack_timeout_s": 1.0},
        "metrics": {"port": None},
        "view": {"port": 0},  # `inspectd run` serves the live view: on any free port
    }
    for key, value in over.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return Settings(**base)


def start_thread(target, *args, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def ready_and_watchdog_seen(server) -> None:
    """Read a fake NOTIFY_SOCKET (a bound AF_UNIX datagram socket with a timeout) until the process
    under test has sent both READY=1 and WATCHDOG=1; socket.timeout when it does not."""
    seen = set()
    while not {"READY=1", "WATCHDOG=1"} <= seen:
        seen.update(server.recv(4096).decode().splitlines())


def wait_until(condition, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def test_doubles_find_demo_defects_and_pass_normal_parts(tmp_path):
    """The doubles are only fit for tests if they are right on the demo line."""
    from inspectd.service.capture import open_source

    settings = service_settings(tmp_path)
    screen, refine = ColourAxisScreenerDouble(), ThresholdRefinerDouble()
    frames = list(open_source(settings.capture.model_copy(update={"max_frames": 16}), "testcam", threading.Event()))
    assert any(f.truth.any() for f in frames) and not all(f.truth.any() for f in frames)
    for frame in frames:
        _, score = screen(frame.image)
        assert (score > DOUBLE_THRESHOLD) == frame.truth.any()
        mask, _, _ = refine(frame.image, {})
        assert (mask == frame.truth).mean() > 0.99


# --- run a daemon process with the doubles: `python tests/test_service_doubles.py ROLE SETTINGS.json` ------
def run_process(role: str, settings_json: str, idle_after: int | None = None) -> None:
    """ROLE = capture | refiner. With idle_after=N, capture stops reading after N frames but keeps
    serving (acks, metrics) until SIGTERM, so counters hold still for a scrape."""
    import itertools
    import logging

    def idle(stop: threading.Event):
        logging.getLogger("test-double").info("%d frame(s) read; idle until SIGTERM", idle_after)
        while not stop.wait(0.2):
            yield None  # "no frame now": the capture loop keeps serving acks and metrics

    from inspectd.service.capture import open_source
    from inspectd.service.capture_process import Screening, run_capture
    from inspectd.service.refiner_process import run_refiner

    logging.basicConfig(level=logging.INFO, format=f"{role} %(levelname)s %(name)s: %(message)s")
    settings = Settings.model_validate_json(Path(settings_json).read_text())
    stop = threading.Event()
    if role == "refiner":
        double = ThresholdRefinerDouble(delay_s=float(os.environ.get("DOUBLE_DELAY_S", "0")),
                                        poison=os.environ.get("DOUBLE_POISON") == "1")
        run_refiner(settings, double, stop, model_id=double.model_id)
        return
    if os.environ.get("DOUBLE_BREAK_SENDER") == "1":  # fault injection: every spool query fails
        from inspectd.service.spool import Spool

        def broken(self, now):
            raise OSError(5, "Input/output error")

        Spool.due_for_resend = broken
    screen = ColourAxisScreenerDouble()
    frames = None
    if idle_after is not None:
        source = open_source(settings.capture.model_copy(update={"max_frames": idle_after}), settings.camera_id, stop)
        frames = itertools.chain(source, idle(stop))
    def reload() -> Screening:  # SIGHUP: a fresh double under a new model id
        return Screening(ColourAxisScreenerDouble(), DOUBLE_THRESHOLD, screen.model_id + "-reloaded")

    run_capture(settings, screen, stop, threshold=screen.threshold, model_id=screen.model_id, frames=frames,
                reload=reload)


if __name__ == "__main__":
    import sys

    run_process(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
