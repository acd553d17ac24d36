"""One process of tests/test_service_netns.py, started inside its own network namespace:

    python tests/netns_node.py capture|refiner|subscriber SETTINGS.json OUT_FILE [DELAY_S]

Each imports everything first, creates OUT_FILE.waiting, and starts its role only when the test
creates OUT_FILE.go: a slow interpreter start (torch) does not decide when a node joins.

capture:    run_capture on the demo line with the test-double screener; writes the ids of the
            frames it flagged, then its summary (with the resends it made) to OUT_FILE as JSON.
refiner:    run_refiner with the test-double refiner (DELAY_S seconds per frame) until SIGTERM.
subscriber: one SUB socket per refiner in transport.results_connect; appends one JSON line per
            result message to OUT_FILE (duplicates included), naming the refiner it came from.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import zmq

from inspectd.service.capture_process import run_capture
from inspectd.service.messages import parse_result
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.refiner_process import run_refiner
from inspectd.service.settings import Settings
from inspectd.service.transport import Transport, recv_multipart_nowait

from test_service_doubles import ColourAxisScreenerDouble, ThresholdRefinerDouble


def capture(settings: Settings, out: Path) -> None:
    flagged, metrics, screen = [], ServiceMetrics("capture"), ColourAxisScreenerDouble()
    summary = run_capture(settings, screen, threading.Event(), threshold=screen.threshold, model_id=screen.model_id,
                          metrics=metrics, on_frame=lambda frame, hit: hit and flagged.append(frame.id))
    out.write_text(json.dumps({**summary, "flagged_ids": flagged, "resends": metrics.resends._value.get()}))


def refiner(settings: Settings, delay_s: float) -> None:
    double = ThresholdRefinerDouble(delay_s=delay_s)
    run_refiner(settings, double, threading.Event(), model_id=double.model_id)  # SIGTERM stops it


def subscriber(settings: Settings, out: Path) -> None:
    transport = Transport(settings.transport)
    socks = [transport.connect(zmq.SUB, [endpoint], subscribe="defect.")
             for endpoint in settings.transport.results_connect]
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    with out.open("a") as lines:
        Path(f"{out}.ready").touch()
        while True:  # until SIGTERM
            for sock, _ in poller.poll(200):
                while (parts := recv_multipart_nowait(sock)) is not None:
                    result, _mask = parse_result(parts)
                    lines.write(json.dumps({"frame_id": result["frame_id"], "camera": result["camera"],
                                            "refiner": socks.index(sock)}) + "\n")
                    lines.flush()


def wait_for_go(out: Path) -> None:
    Path(f"{out}.waiting").touch()
    go = Path(f"{out}.go")
    while not go.exists():
        time.sleep(0.05)


if __name__ == "__main__":
    role, settings_file, out_file = sys.argv[1:4]
    wait_for_go(Path(out_file))
    logging.basicConfig(level=logging.INFO, format=f"{role} %(levelname)s %(name)s: %(message)s")
    node_settings = Settings.model_validate_json(Path(settings_file).read_text())
    if role == "capture":
        capture(node_settings, Path(out_file))
    elif role == "refiner":
        refiner(node_settings, float(sys.argv[4]))
    else:
        subscriber(node_settings, Path(out_file))
