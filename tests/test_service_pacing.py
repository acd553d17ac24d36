"""The demo line paced to its refiner (`inspectd run`): the spool stays bounded when the refiner
is slower than the configured line, and the run says what its refiner can take."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from inspectd.service.cli import cmd_run
from inspectd.service.pacing import MAX_WAITING, LineMeasure, hold_while_backlogged, paced_fps
from inspectd.service.refiner_process import Refinement

from test_service_cli import build_screener_double, parser
from test_service_doubles import ThresholdRefinerDouble, service_settings, start_thread

REFINE_S = 0.2


def test_paced_fps_keeps_the_refiner_below_full_load():
    measure = LineMeasure(refine_seconds=2.0, flag_rate=0.28)  # the demo line on 2 CPU cores
    assert measure.refiner_capacity == pytest.approx(0.5)
    assert paced_fps(10.0, measure) == pytest.approx(0.7 * 0.5 / 0.28)  # 1.25 frames/s
    assert paced_fps(1.0, measure) == 1.0  # never faster than configured
    assert paced_fps(0.0, measure) == pytest.approx(1.25)  # 0 = unpaced: the refiner decides
    assert paced_fps(10.0, LineMeasure(2.0, 0.0)) == 10.0  # nothing flagged: nothing to wait for


def test_hold_takes_no_frame_from_the_source_while_frames_wait():
    taken, waiting = [], [0]

    def source():
        for i in range(6):
            taken.append(i)
            yield i

    frames = hold_while_backlogged(source(), lambda: waiting[0], threading.Event(), limit=2)
    assert [next(frames), next(frames)] == [0, 1]
    waiting[0] = 2
    assert [next(frames) for _ in range(3)] == [None, None, None] and taken == [0, 1]
    waiting[0] = 1
    assert list(frames) == [2, 3, 4, 5]


def test_hold_spaces_frames_by_the_period_it_asks_for_each_time():
    periods = iter([0.2, 0.0, 0.0])
    frames = hold_while_backlogged(iter("abc"), lambda: 0, threading.Event(), period=lambda: next(periods))
    started = time.monotonic()
    taken = [(f, time.monotonic() - started) for f in frames if f is not None]
    assert [f for f, _ in taken] == ["a", "b", "c"]
    assert taken[0][1] < 0.1 and taken[1][1] >= 0.2 and taken[2][1] - taken[1][1] < 0.1


def test_running_refine_seconds_follows_the_refiner_after_its_first_frame():
    from inspectd.service.metrics import ServiceMetrics
    from inspectd.service.pacing import running_refine_seconds

    metrics = ServiceMetrics("run")
    mean = running_refine_seconds(metrics, measured=9.0)
    assert mean() == 9.0
    metrics.refinement_latency.observe(1.0)
    metrics.refinement_latency.observe(2.0)
    assert mean() == pytest.approx(1.5)


def run_demo_line(tmp_path: Path, pace: bool) -> tuple[int, dict, list[str]]:
    """`inspectd run` with the doubles, a refiner of REFINE_S per frame and an unpaced line;
    returns the deepest spool seen, the summary and the printed lines."""
    settings = service_settings(tmp_path / str(pace), capture={"fps": 0, "demo": {"defect_rate": 0.5, "seed": 3,
                                                                                    "pace_to_refiner": pace}})
    path = tmp_path / f"{pace}.yaml"
    path.write_text(settings.model_dump_json())
    spool, depth, done = Path(settings.spool.dir), [0], threading.Event()

    def sample():
        while not done.wait(0.01):
            depth[0] = max(depth[0], len(list(spool.glob("*.frame"))) if spool.is_dir() else 0)

    start_thread(sample)
    lines = []
    refiner = lambda s: Refinement(ThresholdRefinerDouble(delay_s=REFINE_S), "slow-double")  # noqa: E731
    try:
        summary = cmd_run(parser().parse_args(["run", "--settings", str(path), "--frames", "24"]),
                          build_screener_double, refiner, out=lines.append)
    finally:
        done.set()
    return depth[0], summary, lines


def test_paced_demo_line_keeps_the_spool_bounded_and_says_what_its_refiner_takes(tmp_path):
    unpaced_depth, unpaced, _ = run_demo_line(tmp_path, pace=False)
    paced_depth, paced, lines = run_demo_line(tmp_path, pace=True)
    assert unpaced["unacked"] == paced["unacked"] == 0 and paced["flagged"] >= 8
    assert unpaced_depth >= 2 * MAX_WAITING  # every flagged frame queued at once: the spool grows
    assert 1 <= paced_depth <= MAX_WAITING + 1, paced_depth
    said = [line for line in lines if line.startswith("demo line:")]
    assert len(said) == 1 and "flagged frames/s" in said[0]
    capacity = float(said[0].split(" flagged frames/s")[0].rsplit(" ", 1)[1])
    assert capacity == pytest.approx(1 / REFINE_S, rel=0.3)  # measured, not assumed
