"""Acks only the genuine refiner can give (issue 13), with real sockets on 127.0.0.1 and CURVE off.

The capture puts a random `ack_token` in each frame header and keeps it with the spooled frame;
a result acks (deletes) a spooled frame only when it echoes that token. The refiner's cache of
recent results is keyed by (frame_id, token), so a frame pushed earlier under a real frame's id
never has its answer handed to the real frame.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import zmq

from inspectd.data.images import decode_image, encode_png
from inspectd.service.capture_process import run_capture
from inspectd.service.messages import encode_result
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.refiner_process import run_refiner
from inspectd.service.spool import Spool, read_entry
from inspectd.service.transport import Transport

from test_service_doubles import (ColourAxisScreenerDouble, ThresholdRefinerDouble, service_settings, start_thread,
                                  wait_until)
from test_service_pipeline import RawSubscriber, curve_settings, frame_parts  # noqa: F401 (a fixture)


def forged_result(frame_id: str, **over) -> list[bytes]:
    """What an attacker can publish knowing only a frame id: a well-formed result (one small
    defect, so the message has a mask crop part for the hostile cases to vary)."""
    result = {"frame_id": frame_id, "camera": "testcam",
              "timestamps": {"captured": 1.0, "screened": 1.0, "refined": 1.0, "published": 1.0},
              "image_score": 0.0, "decision": "defect",
              "defects": [{"area_px": 4, "bbox": [0, 0, 2, 2], "centroid": [0.5, 0.5], "orientation_deg": 0.0,
                           "major_axis_px": 2.31, "minor_axis_px": 2.31}],
              "refinement": {"seconds": 0.0, "iterations": 0, "device": ""}, "model_id": "forged",
              "screening_model_id": "forged", **over}
    mask = np.zeros((64, 64), bool)
    mask[:2, :2] = True
    return encode_result(result, mask)


def spooled_ids(settings) -> list[str]:
    return [json.loads(read_entry(p)[0])["frame_id"] for p in sorted(settings.spool.dir.glob("*.frame"))]


def all_spooled(settings, metrics: ServiceMetrics, frames: int) -> bool:
    """All `frames` screened and every flagged one on disk: a frame is counted as captured, and as
    flagged, a moment before it is spooled, so the counters alone would race the spool."""
    screened = metrics.frames_screened.labels("testcam")._value.get()
    return screened == frames and len(spooled_ids(settings)) == metrics.frames_flagged.labels("testcam")._value.get()


def test_forged_results_delete_no_spooled_frame_and_the_real_refiner_still_acks(tmp_path):
    settings = service_settings(tmp_path, capture={"max_frames": 16, "demo": {"defect_rate": 0.5, "seed": 11}})
    stop, metrics, screen = threading.Event(), ServiceMetrics("capture"), ColourAxisScreenerDouble()
    summary: dict = {}
    capture = start_thread(lambda: summary.update(run_capture(settings, screen, stop, threshold=screen.threshold,
                                                              metrics=metrics)))
    forger = Transport(settings.transport)  # the refiner is down: anyone can bind its PUB port
    refiner_stop = threading.Event()
    try:
        assert wait_until(lambda: all_spooled(settings, metrics, 16), 30)
        victims = spooled_ids(settings)
        assert len(victims) >= 4
        pub = forger.bind(zmq.XPUB, settings.transport.results_bind)
        assert pub.poll(10_000) and pub.recv().startswith(b"\x01defect.testcam")  # the capture subscribed
        for frame_id in victims:
            pub.send_multipart(forged_result(frame_id))  # no token
            pub.send_multipart(forged_result(frame_id, ack_token="0" * 32))  # a guessed token
        assert wait_until(lambda: metrics.bad_inputs.labels("bad_ack_token")._value.get() == 2 * len(victims), 10)
        assert spooled_ids(settings) == victims and metrics.acks._value.get() == 0  # nothing deleted
        forger.close()
        # the genuine refiner answers every frame, and its results ack them all
        refiner = start_thread(run_refiner, settings, ThresholdRefinerDouble(), refiner_stop)
        capture.join(30)
        assert not capture.is_alive() and summary["unacked"] == 0 and metrics.acks._value.get() == len(victims)
        refiner_stop.set()
        refiner.join(10)
    finally:
        stop.set()
        refiner_stop.set()
        forger.close()


def test_a_frame_pushed_earlier_under_a_real_frames_id_does_not_get_its_answer(tmp_path):
    settings = service_settings(tmp_path)
    stop = threading.Event()
    refiner = start_thread(run_refiner, settings, ThresholdRefinerDouble(), stop, image_size=(32, 32))
    test_side = Transport(settings.transport)  # the test plays the capture process, and an impostor
    push = test_side.frames_push()
    push.sndtimeo = 5000
    subscriber = RawSubscriber(settings)
    try:
        impostor = frame_parts("cam-f-0000001", ack_token="a" * 32)  # a normal part: decision "ok"
        real = frame_parts("cam-f-0000001", ack_token="b" * 32)
        defect = decode_image(real[1])
        defect[4:12, 4:12] = (1.0, 0.1, 0.6)  # off the demo colour axis: a defect
        real = [real[0], encode_png(defect)]
        push.send_multipart(impostor)
        assert wait_until(lambda: len(subscriber.messages) == 1, 15)
        push.send_multipart(real)
        assert wait_until(lambda: len(subscriber.messages) == 2, 10)
        first, second = subscriber.messages
        assert first["ack_token"] == "a" * 32 and first["decision"] == "ok"
        assert second["ack_token"] == "b" * 32 and second["decision"] == "defect"  # refined, not the cached answer
        push.send_multipart(real)  # a resend of the real frame: the cache answers with the real frame's result
        assert wait_until(lambda: len(subscriber.messages) == 3, 10)
        assert subscriber.messages[2] == second
    finally:
        stop.set()
        refiner.join(10)
        subscriber.close()
        test_side.close()


def test_spool_acks_only_with_the_frames_token_across_restarts(tmp_path):
    spool = Spool(tmp_path / "spool", 10, 10**6, 5.0)
    header = json.dumps({"frame_id": "f1", "ack_token": "c" * 32}).encode()
    spool.put("f1", [header, b"png"], token="c" * 32)
    assert not spool.ack("f1") and not spool.ack("f1", "d" * 32) and "f1" in spool
    reopened = Spool(tmp_path / "spool", 10, 10**6, 5.0)  # the token comes back with the frame
    assert not reopened.ack("f1", "d" * 32) and reopened.ack("f1", "c" * 32) and len(reopened) == 0


def test_with_curve_on_a_forger_cannot_even_deliver_a_result(curve_settings):
    """CURVE on: the capture only completes a handshake with a server holding the refiner's key,
    so a forger bound on the refiner's port (the refiner is down) never gets a result through."""
    settings = curve_settings["capture"]
    settings = settings.model_copy(update={"capture": settings.capture.model_copy(update={"max_frames": 8})})
    stop, metrics, screen = threading.Event(), ServiceMetrics("capture"), ColourAxisScreenerDouble()
    start_thread(run_capture, settings, screen, stop, threshold=screen.threshold, metrics=metrics)
    forger = Transport(curve_settings["intruder_of_capture"].transport)  # its own keys, not the refiner's
    try:
        assert wait_until(lambda: all_spooled(settings, metrics, 8), 30)
        victims = spooled_ids(settings)
        assert victims
        pub = forger.bind(zmq.XPUB, settings.transport.results_bind)
        assert not pub.poll(3000)  # no subscription: the capture refused the handshake
        for frame_id in victims * 20:
            pub.send_multipart(forged_result(frame_id))
        time.sleep(1.0)
        assert spooled_ids(settings) == victims and metrics.acks._value.get() == 0
        assert sum(metrics.bad_inputs.labels(k)._value.get() for k in ("malformed", "bad_ack_token")) == 0
    finally:
        stop.set()
        forger.close()
