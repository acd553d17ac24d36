"""Work sharing between refiners on 127.0.0.1: a slow refiner must not hoard flagged frames.

PUSH deals frames round-robin to every refiner whose queue has room; the frame path's small
HWM and kernel buffers (transport.frames_hwm, FRAME_SOCKET_BUFFER_BYTES) bound what one refiner
can hold, so frames wait in the capture's spool and go to whichever refiner frees up.
"""

from __future__ import annotations

import threading

from inspectd.service.capture_process import run_capture
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.refiner_process import run_refiner

from test_service_doubles import ColourAxisScreenerDouble, ThresholdRefinerDouble, free_port, service_settings, \
    start_thread

FRAMES = 24
SLOW_S, FAST_S = 1.0, 0.02


def refined(metrics: ServiceMetrics, camera: str) -> float:
    return metrics.frames_refined.labels(camera)._value.get()


def test_a_slow_refiner_holds_only_a_few_frames_while_a_fast_one_takes_the_rest(tmp_path):
    results = [free_port(), free_port()]
    settings = service_settings(tmp_path, capture={"max_frames": FRAMES, "size": 128, "demo": {"defect_rate": 1.0, "seed": 4}},
                                spool={"ack_timeout_s": 30.0})  # no resends: each frame is refined once
    settings.transport.results_connect = [f"tcp://127.0.0.1:{port}" for port in results]
    stop = threading.Event()
    metrics = {name: ServiceMetrics("refiner") for name in ("slow", "fast")}
    refiners = []
    for (name, delay), port in zip((("slow", SLOW_S), ("fast", FAST_S)), results):
        own = settings.model_copy(deep=True)
        own.transport.results_bind = f"tcp://127.0.0.1:{port}"
        refiners.append(start_thread(run_refiner, own, ThresholdRefinerDouble(delay_s=delay), stop,
                                     metrics=metrics[name]))
    screen = ColourAxisScreenerDouble()
    try:
        summary = run_capture(settings, screen, stop, threshold=screen.threshold, metrics=ServiceMetrics("capture"))
        assert summary["unacked"] == 0 and summary["spooled"] >= FRAMES - 2
        slow, fast = refined(metrics["slow"], "testcam"), refined(metrics["fast"], "testcam")
        assert slow + fast == summary["spooled"]
        # round-robin with 100-frame queues and autotuned TCP buffers gives the slow refiner half the
        # frames (12 of 24); bounded queues leave it the few that were in flight to it (5 measured)
        assert 1 <= slow <= 6, (slow, fast)
    finally:
        stop.set()
        for thread in refiners:
            thread.join(10)
