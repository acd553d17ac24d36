"""The soak benchmark's measurements (the 10-minute run itself is `inspectd bench soak`)."""

import os

import pytest

from inspectd.errors import InspectdError
from inspectd.eval.soak_bench import growth, rss_mb


def test_rss_of_this_process_is_read_from_proc():
    assert 10 < rss_mb(os.getpid()) < 100_000


def test_growth_is_measured_after_the_warm_up_only():
    samples = [(0, 10.0), (30, 500.0), (60, 800.0), (120, 800.0), (180, 803.0)]
    g = growth(samples, warmup_s=60)
    assert g["after_warmup_mb"] == 800.0 and g["growth_mb"] == 3.0 and g["max_mb"] == 803.0
    assert 0 < g["slope_mb_per_min"] < 3
    with pytest.raises(InspectdError, match="too short"):
        growth(samples[:4], warmup_s=120)
