"""`inspectd bench scale`'s own arithmetic (the run itself needs the demo bundle: see docs)."""

from __future__ import annotations

import pytest

from inspectd.errors import ConfigError
from inspectd.eval.scale_bench import parse_counts, summarise


def result(frame_id: str, captured: float, published: float, refiner: int, seconds: float = 1.0) -> dict:
    return {"frame_id": frame_id, "timestamps": {"captured": captured, "published": published},
            "refinement": {"seconds": seconds}, "refiner": refiner}


def test_counts_always_include_the_one_refiner_baseline():
    assert parse_counts("2") == [1, 2]
    assert parse_counts("4, 2,2") == [1, 2, 4]
    for bad in ("", "x", "0,1"):
        with pytest.raises(ConfigError, match="--refiners"):
            parse_counts(bad)


def test_summary_counts_from_first_capture_to_last_publication():
    burst = [result("a", 100.0, 102.0, 0), result("b", 100.0, 102.5, 1), result("c", 100.5, 104.0, 0),
             result("d", 100.5, 104.0, 1, seconds=3.0)]
    run = summarise(burst, 2, [0, 1])
    assert run["seconds"] == 4.0 and run["refined_per_s"] == 1.0
    assert run["frames_per_refiner"] == [2, 2]
    assert run["latency_p50_s"] == pytest.approx(3.0) and run["latency_p99_s"] == pytest.approx(3.5, abs=0.01)
    assert run["refine_seconds_p50"] == 1.0
