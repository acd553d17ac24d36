"""Hostile values on real sockets (issue 13): watch never crashes on any result and counts what it
ignores; a refiner never publishes a non-finite or out-of-range value."""

from __future__ import annotations

import collections
import json
import threading

import numpy as np
import pytest
import zmq

from inspectd.service.metrics import ServiceMetrics
from inspectd.service.refiner_process import run_refiner
from inspectd.service.settings import Settings
from inspectd.service.transport import Transport
from inspectd.service.watch import watch

from test_service_acks import forged_result
from test_service_doubles import service_settings, start_thread, wait_until
from test_service_pipeline import RawSubscriber, frame_parts


def with_json(parts: list[bytes], **over) -> list[bytes]:
    with_json.count = getattr(with_json, "count", 0) + 1  # each its own frame: none is a duplicate
    result = {**json.loads(parts[1]), "frame_id": f"hostile-{with_json.count}", **over}
    return [parts[0], json.dumps(result).encode(), parts[2]]


def test_watch_survives_any_result_and_counts_what_it_ignores(tmp_path):
    settings = service_settings(tmp_path)
    good = forged_result("cam-1-0000001")  # well-formed: what a refiner publishes
    hostile = [
        [b"defect.testcam"], [b"defect.testcam", b"\xff" * 10, b""], [b"defect.testcam", b"[" * 60_000, good[2]],
        [good[0], good[1].replace(b'"image_score":0.0', b'"image_score":1' + b"0" * 400), good[2]],
        with_json(good, refinement={"seconds": "slow", "iterations": 1, "device": ""}),
        with_json(good, refinement={}), with_json(good, decision="defect", defects=[1]),
        with_json(good, decision="defect", defects=[{"area_px": "big"}]),
        with_json(good, decision="error", error=["not", "a", "string"]),
        with_json(good, timestamps=None),
    ]
    publisher = Transport(settings.transport)  # the test plays a refiner
    pub = publisher.bind(zmq.XPUB, settings.transport.results_bind)
    lines, bad, seen = [], collections.Counter(), []
    stop = threading.Event()
    watcher = start_thread(lambda: seen.append(watch(settings, stop, count=1, timeout_s=30, out=lines.append,
                                                     bad=bad)))
    try:
        assert pub.poll(10_000) and pub.recv().startswith(b"\x01defect.")
        for parts in hostile:
            pub.send_multipart(parts)
        pub.send_multipart(good)
        watcher.join(20)
        assert not watcher.is_alive() and seen == [1], bad
        assert len(lines) == 1 and "cam-1-0000001" in lines[0] and "defect 1/1: area 4 px" in lines[0]
        assert sum(bad.values()) == len(hostile), bad  # every bad one counted, by kind
        assert bad["malformed"] >= 5 and bad["unprintable"] == 4
    finally:
        stop.set()
        publisher.close()


def test_a_forged_result_does_not_hide_the_genuine_one_from_watch(tmp_path):
    settings = service_settings(tmp_path)
    publisher = Transport(settings.transport)
    pub = publisher.bind(zmq.XPUB, settings.transport.results_bind)
    lines, stop = [], threading.Event()
    watcher = start_thread(watch, settings, stop, timeout_s=4, out=lines.append)
    try:
        assert pub.poll(10_000) and pub.recv().startswith(b"\x01defect.")
        pub.send_multipart(forged_result("cam-1-0000007"))  # first, without the frame's token
        pub.send_multipart(forged_result("cam-1-0000007", ack_token="e" * 32, model_id="genuine"))
        pub.send_multipart(forged_result("cam-1-0000007", ack_token="e" * 32, model_id="genuine"))  # a resend
        watcher.join(20)
        assert not watcher.is_alive() and len(lines) == 2  # the resend was de-duplicated, the genuine one shown
    finally:
        stop.set()
        publisher.close()


def test_refiner_never_publishes_a_value_that_is_not_finite(tmp_path):
    settings = service_settings(tmp_path)
    stop, metrics = threading.Event(), ServiceMetrics("refiner")

    def nan_scores(image, header):
        scores = np.full(image.shape[:2], np.nan, np.float32)
        return np.ones(image.shape[:2], bool), scores, {"iterations": 1}

    refiner = start_thread(run_refiner, settings, nan_scores, stop, metrics=metrics, image_size=(32, 32))
    test_side = Transport(settings.transport)
    push = test_side.frames_push()
    push.sndtimeo = 5000
    subscriber = RawSubscriber(settings)
    try:
        push.send_multipart(frame_parts("nan-1"))
        assert wait_until(lambda: subscriber.messages, 15)
        result = subscriber.messages[0]
        assert result["decision"] == "error" and "not finite" in result["error"] and refiner.is_alive()
    finally:
        stop.set()
        refiner.join(10)
        subscriber.close()
        test_side.close()


@pytest.mark.parametrize("value", [1e-200, -1.0, 1e200])
def test_px_per_mm_setting_is_bounded_too(value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="px_per_mm"):
        Settings(px_per_mm=value)
