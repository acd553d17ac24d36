"""The daemon end to end, with real sockets on 127.0.0.1, real processes where it matters, and
the test doubles of tests/test_service_doubles.py in place of the ONNX screener and F2PAD:

- a demo stream with known defects: every defect published with a mask matching the truth,
  and the counters scraped over HTTP agree;
- kill -9 of a refiner mid-stream, then a restart: every flagged frame still published;
- SIGTERM keeps the spool, a restart sends it; SIGHUP reloads the model without dropping frames;
- malformed, oversized, corrupt and wrong-size messages are counted by kind, the refiner stays up;
- with CURVE on, clients with unknown keys get nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from inspectd.data.images import encode_png
from inspectd.eval.metrics import iou
from inspectd.service.capture_process import run_capture
from inspectd.service.messages import encode_frame, parse_result
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.refiner_process import run_refiner
from inspectd.service.settings import Settings
from inspectd.service.transport import Deduplicator, Transport, make_keypair, recv_multipart_nowait
from inspectd.service.watch import format_result, results

from test_service_doubles import (DEMO_TINT, ColourAxisScreenerDouble, ThresholdRefinerDouble, service_settings, start_thread,
                                  wait_until)

HERE = Path(__file__).resolve().parent


def scrape(metrics: ServiceMetrics, name: str, **labels) -> float:
    """A sample value read over HTTP from the process's /metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics.server.server_port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} " if want else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not served")


class RawSubscriber:
    """Every result message as it arrives (duplicates included), in a thread."""

    def __init__(self, settings: Settings):
        """Start it after the refiner(s): it waits for their handshakes (PUB/SUB drops what came before)."""
        self.messages: list[dict] = []
        self.masks: dict[str, np.ndarray] = {}
        self.stop = threading.Event()
        self.transport = Transport(settings.transport)
        self.sock = self.transport.results_sub(wait_s=15)
        self.thread = start_thread(self.run)

    def run(self):
        while not self.stop.is_set():
            if self.sock.poll(50):
                while (parts := recv_multipart_nowait(self.sock)) is not None:
                    result, mask = parse_result(parts)
                    self.messages.append(result)
                    self.masks[result["frame_id"]] = mask.full()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.transport.close()


class Collector:
    """on_frame hook of run_capture: which frames were flagged, and their truth masks."""

    def __init__(self):
        self.truth, self.flagged = {}, []

    def __call__(self, frame, flagged):
        self.truth[frame.id] = frame.truth
        if flagged:
            self.flagged.append(frame.id)


def start_refiner_process(settings: Settings, tmp_path: Path, name: str, delay_s: float = 0.0) -> subprocess.Popen:
    path = tmp_path / f"{name}.json"
    path.write_text(settings.model_dump_json())
    env = {**os.environ, "DOUBLE_DELAY_S": str(delay_s)}
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, str(HERE / "test_service_doubles.py"), "refiner", str(path)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def test_demo_stream_publishes_every_defect_with_a_matching_mask(tmp_path):
    settings = service_settings(tmp_path, capture={"max_frames": 30})
    stop = threading.Event()
    capture_metrics, refiner_metrics = ServiceMetrics("capture"), ServiceMetrics("refiner")
    capture_metrics.serve("127.0.0.1", 0)
    refiner_metrics.serve("127.0.0.1", 0)
    refiner = start_thread(run_refiner, settings, ThresholdRefinerDouble(), stop, metrics=refiner_metrics)
    got, ready = [], threading.Event()
    start_thread(lambda: got.extend(results(settings, stop, camera="testcam", ready=ready)))
    assert ready.wait(10)
    collect, screen = Collector(), ColourAxisScreenerDouble()
    summary = run_capture(settings, screen, stop, threshold=screen.threshold, metrics=capture_metrics,
                          on_frame=collect)
    try:
        assert summary["unacked"] == 0
        assert wait_until(lambda: len(got) == len(collect.flagged), 10)
        published = {r["frame_id"]: (r, mask) for r, mask in got}
        defective = [fid for fid, truth in collect.truth.items() if truth.any()]
        normal = [fid for fid, truth in collect.truth.items() if not truth.any()]
        assert len(defective) >= 5 and len(normal) >= 5
        for fid in defective:
            result, mask = published[fid]
            assert result["decision"] == "defect" and iou(mask.full(), collect.truth[fid]) > 0.5, fid
            assert sum(d["area_px"] for d in result["defects"]) == pytest.approx(collect.truth[fid].sum(), rel=0.2)
            assert format_result(result)[0].count("area") == 1
        assert sum(fid in published for fid in normal) <= 0.1 * len(normal)
        # counters over HTTP agree with what the subscriber saw
        flagged = len(collect.flagged)
        assert scrape(capture_metrics, "inspectd_frames_captured_total", camera="testcam") == 30
        assert scrape(capture_metrics, "inspectd_frames_screened_total", camera="testcam") == 30
        assert scrape(capture_metrics, "inspectd_frames_flagged_total", camera="testcam") == flagged == len(got)
        assert scrape(capture_metrics, "inspectd_acks_total") == flagged
        assert scrape(refiner_metrics, "inspectd_frames_refined_total", camera="testcam") == flagged
        assert scrape(refiner_metrics, "inspectd_defects_published_total", camera="testcam") == \
            sum(len(r["defects"]) for r, _ in got)
        assert scrape(capture_metrics, "inspectd_screening_duration_seconds_count") == 30
    finally:
        stop.set()
        refiner.join(10)
        capture_metrics.stop()
        refiner_metrics.stop()


def test_refiner_killed_with_sigkill_loses_no_flagged_frame(tmp_path):
    settings = service_settings(tmp_path, capture={"max_frames": 40, "demo": {"defect_rate": 0.5, "seed": 11}})
    refiner = start_refiner_process(settings, tmp_path, "refiner-1", delay_s=0.1)
    subscriber = RawSubscriber(settings)
    stop, collect, metrics = threading.Event(), Collector(), ServiceMetrics("capture")
    screen = ColourAxisScreenerDouble()
    summary = {}
    capture = start_thread(lambda: summary.update(run_capture(settings, screen, stop, threshold=screen.threshold,
                                                              metrics=metrics, on_frame=collect)))
    restarted = None
    try:
        assert wait_until(lambda: len(subscriber.messages) >= 3, 30), (tmp_path / "refiner-1.log").read_text()
        refiner.kill()  # SIGKILL mid-stream: frames queued in the dead process are lost with it
        refiner.wait(5)
        restarted = start_refiner_process(settings, tmp_path, "refiner-2", delay_s=0.1)
        capture.join(60)
        assert not capture.is_alive() and summary["unacked"] == 0
        assert wait_until(lambda: {m["frame_id"] for m in subscriber.messages} >= set(collect.flagged), 5)
        dedup = Deduplicator()
        unique = [m["frame_id"] for m in subscriber.messages if dedup.first_time(m["frame_id"])]
        assert sorted(unique) == sorted(collect.flagged) and len(unique) == len(set(unique))
        assert metrics.resends._value.get() > 0  # the kill really cost something, which resends repaired
    finally:
        stop.set()
        subscriber.close()
        for proc in (refiner, restarted):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)


def test_sigterm_keeps_the_spool_and_the_next_start_sends_it_sighup_reloads(tmp_path):
    settings = service_settings(tmp_path, capture={"max_frames": 16, "demo": {"defect_rate": 0.5, "seed": 5}},
                                metrics={"port": 0})
    # capture runs as a real process with no refiner: flagged frames can only wait in the spool
    path = tmp_path / "capture.json"
    path.write_text(settings.model_dump_json())
    log = open(tmp_path / "capture.log", "w")
    capture = subprocess.Popen([sys.executable, str(HERE / "test_service_doubles.py"), "capture", str(path), "16"],
                               stdout=log, stderr=subprocess.STDOUT)
    spool_dir = Path(settings.spool.dir)

    def log_text():
        return (tmp_path / "capture.log").read_text()

    try:
        assert wait_until(lambda: "16 frame(s) read" in log_text() or "idle" in log_text(), 30), log_text()
        capture.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "reloaded: model test-double-colour-axis-reloaded" in log_text(), 10), log_text()
        capture.send_signal(signal.SIGTERM)
        assert capture.wait(15) == 0, log_text()
    finally:
        if capture.poll() is None:
            capture.kill()
    spooled = sorted(p.name.split("_", 1)[1][: -len(".frame")] for p in spool_dir.glob("*.frame"))
    assert spooled and "kept in the spool" in log_text()
    # next start: a refiner is up; a capture with an empty source sends the spool and drains it
    stop = threading.Event()
    refiner = start_thread(run_refiner, settings.model_copy(update={"metrics": settings.metrics.model_copy(
        update={"port": None})}), ThresholdRefinerDouble(), stop)
    subscriber = RawSubscriber(settings)
    screen = ColourAxisScreenerDouble()
    try:
        summary = run_capture(settings.model_copy(update={"metrics": settings.metrics.model_copy(
            update={"port": None})}), screen, threading.Event(), threshold=screen.threshold, frames=iter(()))
        assert summary["unacked"] == 0 and not list(spool_dir.glob("*.frame"))
        assert wait_until(lambda: {m["frame_id"] for m in subscriber.messages} >= set(spooled), 5)
    finally:
        stop.set()
        subscriber.close()
        refiner.join(10)


def frame_parts(frame_id: str, size=(32, 32), **over) -> list[bytes]:
    header = {"frame_id": frame_id, "camera": "testcam", "captured_at": time.time(), "screened_at": time.time(),
              "score": 1.0, "threshold": 0.5, "map_summary": {}, "model_id": "m", "px_per_mm": 2.0}
    normal_part = np.ones((*size, 3), np.float32) * 0.5 * np.asarray(DEMO_TINT, np.float32)  # on the demo colour axis
    return encode_frame({**header, **over}, normal_part)


def test_bad_messages_are_counted_by_kind_and_the_refiner_stays_up(tmp_path):
    settings = service_settings(tmp_path)  # max_message_bytes 200 kB; zmq cuts parts above 400 kB
    stop, metrics = threading.Event(), ServiceMetrics("refiner")
    refiner = start_thread(run_refiner, settings, ThresholdRefinerDouble(), stop, metrics=metrics,
                           image_size=(32, 32))
    test_side = Transport(settings.transport)  # the test plays a (misbehaving) capture process
    push = test_side.frames_push()
    push.sndtimeo = 5000
    subscriber = RawSubscriber(settings)  # the refiner thread binds its PUB first thing
    good = frame_parts("good-1")
    bad = {
        "malformed": [[b"just one part"], [b"{not json", good[1]]],
        "schema_version": [[good[0].replace(b'"schema":3', b'"schema":7'), good[1]]],
        "bad_image": [[good[0], b"\x89PNG\r\n\x1a\n" + bytes(100)]],
        "wrong_size": [[good[0], encode_png(np.zeros((20, 32, 3), np.float32))],  # PNG != header
                       frame_parts("small-1", size=(24, 24))],  # not the model's 32x32
        "oversized": [[good[0], bytes(250_000)]],
    }
    try:
        for messages in bad.values():
            for parts in messages:
                push.send_multipart(parts)
        expected = {kind: len(messages) for kind, messages in bad.items()}
        counted = lambda: {k: metrics.bad_inputs.labels(k)._value.get() for k in expected}  # noqa: E731
        assert wait_until(lambda: counted() == expected, 10), counted()
        # above ZMQ_MAXMSGSIZE: zmq drops it and cuts the connection; the refiner connects again
        push.send_multipart([good[0], bytes(500_000)])
        assert wait_until(lambda: metrics.reconnects._value.get() == 1, 10)
        deadline = time.monotonic() + 15
        while not subscriber.messages and time.monotonic() < deadline:
            if push.poll(0, zmq.POLLOUT):
                push.send_multipart(good)  # resend until seen, like capture does
            time.sleep(0.3)
        assert [m["frame_id"] for m in subscriber.messages][:1] == ["good-1"]
        assert subscriber.messages[0]["defects"] == [] and subscriber.messages[0]["decision"] == "ok"
        assert refiner.is_alive() and counted() == expected
    finally:
        stop.set()
        refiner.join(10)
        subscriber.close()
        test_side.close()


@pytest.fixture()
def curve_settings(tmp_path):
    """Keys for capture, refiner and an intruder; each server trusts only its known clients."""
    keys = tmp_path / "keys"
    for name in ("capture", "refiner", "intruder"):
        make_keypair(keys, name)
    for server, clients in {"refiner": ["capture"], "capture": ["refiner"], "intruder": []}.items():
        folder = keys / f"{server}-clients"
        folder.mkdir()
        for client in clients:
            shutil.copy(keys / f"{client}.key", folder)
    base = service_settings(tmp_path)

    def with_curve(own: str, server: str) -> Settings:
        curve = {"secret_key": keys / f"{own}.key_secret", "server_public_key": keys / f"{server}.key",
                 "authorized_clients": keys / f"{own}-clients"}
        transport = base.transport.model_copy(update={"curve": base.transport.curve.model_validate(curve)})
        return base.model_copy(update={"transport": transport})

    return {"capture": with_curve("capture", "refiner"), "refiner": with_curve("refiner", "capture"),
            "intruder_of_refiner": with_curve("intruder", "refiner"),
            "intruder_of_capture": with_curve("intruder", "capture")}


def test_curve_refiner_ignores_a_client_with_an_unknown_key(curve_settings):
    stop = threading.Event()
    refiner = start_thread(run_refiner, curve_settings["refiner"], ThresholdRefinerDouble(), stop)
    capture_side = Transport(curve_settings["capture"].transport)
    intruder_side = Transport(curve_settings["intruder_of_refiner"].transport)
    thief_side = Transport(curve_settings["intruder_of_capture"].transport)
    push, known_sub = capture_side.frames_push(), capture_side.results_sub()
    intruder_sub = intruder_side.results_sub()
    monitor = intruder_sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    thief_pull = thief_side.frames_pull()  # an unknown "refiner" trying to take frames from capture
    thief_monitor = thief_pull.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    try:
        received = []
        deadline = time.monotonic() + 15
        while len(received) < 3 and time.monotonic() < deadline:
            push.send_multipart(frame_parts(f"secret-{len(received)}"), flags=zmq.NOBLOCK) if push.poll(
                0, zmq.POLLOUT) else None
            if known_sub.poll(300):
                received.append(parse_result(known_sub.recv_multipart())[0]["frame_id"])
        assert len(received) >= 3  # the known client gets results
        for mon in (monitor, thief_monitor):  # both handshakes refused by the servers' authenticators
            assert mon.poll(5000), "an unknown client's handshake was not refused"
            assert recv_monitor_message(mon)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        assert not intruder_sub.poll(500) and not thief_pull.poll(100)  # unknown clients get nothing
    finally:
        stop.set()
        refiner.join(10)
        intruder_sub.disable_monitor()
        thief_pull.disable_monitor()
        for side in (capture_side, intruder_side, thief_side):
            side.close()


def test_reload_mid_stream_switches_model_without_dropping_a_frame(tmp_path):
    """What SIGHUP does (reload_event is what the handler sets), here while frames flow."""
    import json

    from inspectd.service.capture_process import Screening
    from inspectd.service.spool import Spool

    settings = service_settings(tmp_path, capture={"max_frames": 20, "demo": {"defect_rate": 0.5, "seed": 2}})
    stop, reload_event, metrics = threading.Event(), threading.Event(), ServiceMetrics("capture")
    screen = ColourAxisScreenerDouble()
    seen = []

    def on_frame(frame, flagged):
        seen.append(frame.id)
        if len(seen) == 8:
            reload_event.set()
        if len(seen) == 20:
            stop.set()  # no refiner here: stop instead of waiting for acks

    def reload() -> Screening:
        return Screening(ColourAxisScreenerDouble(), screen.threshold, "model-v2")

    summary = run_capture(settings, screen, stop, threshold=screen.threshold, model_id="model-v1", reload=reload,
                          reload_event=reload_event, metrics=metrics, on_frame=on_frame)
    assert summary["frames"] == 20 and metrics.frames_screened.labels("testcam")._value.get() == 20
    assert metrics.reloads.labels("ok")._value.get() == 1
    spool = Spool(settings.spool.dir, 100, 10**9, 1.0)
    models = [json.loads(spool.load(fid)[0])["model_id"] for fid in spool.due_for_resend(0)]
    assert len(models) == summary["flagged"] and models == sorted(models)  # v1 ... then v2, in frame order
    assert models[0] == "model-v1" and models[-1] == "model-v2"


def test_a_taken_port_is_one_clear_error(tmp_path):
    from inspectd.errors import ConfigError

    settings = service_settings(tmp_path)
    blocker = Transport(settings.transport)
    held = blocker.results_pub()  # keep a reference: a collected socket closes and frees the port
    try:
        with pytest.raises(ConfigError, match="cannot bind tcp://127.0.0.1:"):
            run_refiner(settings, ThresholdRefinerDouble(), threading.Event())
    finally:
        held.close()
        blocker.close()
