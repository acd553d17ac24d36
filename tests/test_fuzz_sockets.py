"""Real-socket fuzz on 127.0.0.1, a few seconds each (issue 13): every hostile case of
inspectd/eval/chaos.py, then random mutations, sent to a refiner and to a capture process's ack
listener. Each input is either counted as bad (by kind) or handled as a valid message; neither
loop stops, and no frame is lost: forged results delete nothing from the spool.

The expected count comes from parsing each input locally with the same parser and limits (the
oracle): the question here is not what the parser says but that the daemon counts every input.
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import zmq

from inspectd.eval.chaos import frame_cases, result_cases
from inspectd.service.capture_process import run_capture
from inspectd.service.messages import MessageError, parse_frame, parse_result
from inspectd.service.metrics import ServiceMetrics
from inspectd.service.refiner_process import run_refiner
from inspectd.service.transport import Transport

from test_service_acks import all_spooled, forged_result, spooled_ids
from test_service_doubles import (ColourAxisScreenerDouble, ThresholdRefinerDouble, service_settings, start_thread,
                                  wait_until)
from test_service_pipeline import RawSubscriber, frame_parts

FUZZ_SECONDS = 3.0


def bad_total(metrics: ServiceMetrics) -> float:
    return sum(sample.value for metric in metrics.bad_inputs.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


def test_refiner_counts_every_hostile_frame_and_loses_no_good_one(tmp_path):
    # large enough that the 0.9 MB bomb reaches the parser instead of being cut by ZMQ_MAXMSGSIZE
    settings = service_settings(tmp_path, transport={"max_message_bytes": 2_000_000, "hwm": 1000})
    stop, metrics = threading.Event(), ServiceMetrics("refiner")
    refiner = start_thread(run_refiner, settings, ThresholdRefinerDouble(), stop, metrics=metrics,
                           image_size=(32, 32))
    test_side = Transport(settings.transport)
    push = test_side.frames_push()
    push.sndtimeo = 5000
    subscriber = RawSubscriber(settings)
    rng, cases = np.random.default_rng(13), frame_cases()
    limits = dict(max_bytes=settings.transport.max_message_bytes, expected_size=(32, 32),
                  max_pixels=settings.transport.max_frame_pixels)
    sent = {"bad": 0, "valid": 0, "good": 0}
    try:
        deadline = time.monotonic() + FUZZ_SECONDS
        for n in itertools.count():
            if time.monotonic() > deadline and n >= 2 * len(cases):
                break
            name = list(cases)[n % len(cases)]
            good = frame_parts(f"fuzz-{n}", ack_token=rng.bytes(16).hex())
            parts = cases[name](good, rng)
            try:
                parse_frame(parts, **limits)
                sent["valid"] += 1  # a mutation that happens to be a valid frame: refined like any other
            except MessageError:
                sent["bad"] += 1
            push.send_multipart(parts)
            if n % 10 == 0:
                push.send_multipart(frame_parts(f"good-{n}", ack_token=rng.bytes(16).hex()))
                sent["good"] += 1
        published = lambda: len(subscriber.messages)  # noqa: E731
        assert wait_until(lambda: bad_total(metrics) == sent["bad"] and
                          published() == sent["valid"] + sent["good"], 30), (bad_total(metrics), published(), sent)
        assert refiner.is_alive() and sent["bad"] > 100
        good_ids = {m["frame_id"] for m in subscriber.messages if m["frame_id"].startswith("good-")}
        assert len(good_ids) == sent["good"]  # no good frame lost among the hostile ones
    finally:
        stop.set()
        refiner.join(10)
        subscriber.close()
        test_side.close()


def test_capture_counts_every_hostile_result_and_forged_ones_delete_nothing(tmp_path):
    settings = service_settings(tmp_path, capture={"max_frames": 12, "demo": {"defect_rate": 0.5, "seed": 7}},
                                transport={"max_message_bytes": 2_000_000, "hwm": 1000})
    stop, metrics, screen = threading.Event(), ServiceMetrics("capture"), ColourAxisScreenerDouble()
    summary: dict = {}
    capture = start_thread(lambda: summary.update(run_capture(settings, screen, stop, threshold=screen.threshold,
                                                              metrics=metrics)))
    forger, refiner_stop = Transport(settings.transport), threading.Event()
    try:
        assert wait_until(lambda: all_spooled(settings, metrics, 12), 30)
        victims = spooled_ids(settings)
        assert victims
        pub = forger.bind(zmq.XPUB, settings.transport.results_bind)
        assert pub.poll(10_000) and pub.recv().startswith(b"\x01defect.testcam")
        rng, cases, expected = np.random.default_rng(13), result_cases(), 0
        deadline = time.monotonic() + FUZZ_SECONDS
        for n in itertools.count():
            if time.monotonic() > deadline and n >= 2 * len(cases):
                break
            good = forged_result(victims[n % len(victims)])  # well-formed, for a spooled frame, no token
            parts = list(cases.values())[n % len(cases)](good, rng)
            try:
                result, _ = parse_result(parts, settings.transport.max_frame_pixels)
                expected += result["frame_id"] in victims  # well-formed: counted as bad_ack_token
            except MessageError:
                expected += 1
            pub.send_multipart(parts)
        assert wait_until(lambda: bad_total(metrics) == expected, 30), (bad_total(metrics), expected)
        assert spooled_ids(settings) == victims and metrics.acks._value.get() == 0  # nothing deleted
        forger.close()
        refiner = start_thread(run_refiner, settings, ThresholdRefinerDouble(), refiner_stop)
        capture.join(30)  # the ack listener is still alive: the genuine results ack every frame
        assert not capture.is_alive() and summary["unacked"] == 0 and metrics.acks._value.get() == len(victims)
        refiner_stop.set()
        refiner.join(10)
    finally:
        stop.set()
        refiner_stop.set()
        forger.close()
