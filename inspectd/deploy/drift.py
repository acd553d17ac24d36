"""Score drift: do the line's normal-looking frames still score like the bundle's normal images?

At fit, the bundle keeps the screening scores of its held-out normal images (calibration.json,
`drift_reference`). A change of light, focus, camera position or of the parts themselves moves
the scores of every frame long before it shows up as false alarms or missed defects. The
statistic is the two-sample Kolmogorov-Smirnov statistic (scipy): the largest gap between the
empirical distribution functions of the recent scores and of the reference, 0 = same
distribution, 1 = no overlap at all. KS needs no bins, which matters with the few dozen
held-out images a bundle has.

Only frames at or below the screening threshold take part, on both sides: defective parts are
not what drifts, and a line that makes many defects would otherwise look drifted. When most of
the window is above the threshold, the normal scores have moved past it: that is drift at its
worst, and the statistic is 1.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

import numpy as np
from scipy.stats import ks_2samp

log = logging.getLogger(__name__)
MIN_NORMAL_SHARE = 0.5  # below this share of normal-looking frames in a window the statistic is 1


@dataclass
class DriftReading:
    statistic: float  # KS statistic, 0..1
    p_value: float  # of "same distribution" (1.0 when the statistic is 1 by the flagged-share rule)
    frames: int  # frames in the window
    normal_looking: int  # of them at or below the screening threshold
    median: float  # median score of the normal-looking frames (nan when none)
    reference_median: float


def drift_statistic(scores, normal_scores, screen_threshold: float) -> DriftReading:
    """KS statistic of `scores` (a window of screening scores) against the bundle's normal scores."""
    scores = np.asarray(scores, np.float64)
    reference = np.asarray(normal_scores, np.float64)
    if scores.size == 0 or reference.size == 0:
        raise ValueError("drift needs at least one recent score and one reference score")
    normal_looking = scores[scores <= screen_threshold]
    kept = reference[reference <= screen_threshold]
    reference = kept if kept.size else reference  # a threshold set below every normal score: compare all
    median = float(np.median(normal_looking)) if normal_looking.size else float("nan")
    if normal_looking.size < MIN_NORMAL_SHARE * scores.size:
        return DriftReading(1.0, 0.0, int(scores.size), int(normal_looking.size), median,
                            float(np.median(reference)))
    test = ks_2samp(normal_looking, reference)
    return DriftReading(float(test.statistic), float(test.pvalue), int(scores.size), int(normal_looking.size),
                        median, float(np.median(reference)))


class DriftMonitor:
    """The capture's running check: the last `window` scores, a reading every `every` frames once
    `min_frames` are in, a log line when the statistic crosses `alarm` (either way)."""

    def __init__(self, normal_scores, screen_threshold: float, window: int = 200, min_frames: int = 50,
                 every: int = 10, alarm: float = 0.5, camera: str = ""):
        self.reference = np.asarray(normal_scores, np.float64)
        self.screen_threshold = float(screen_threshold)
        self.scores: collections.deque[float] = collections.deque(maxlen=window)
        self.min_frames, self.every, self.alarm, self.camera = min(min_frames, window), every, alarm, camera
        self.seen = 0
        self.drifting = False

    def add(self, score: float) -> DriftReading | None:
        """Take one frame's score; a reading when one is due, else None."""
        self.scores.append(float(score))
        self.seen += 1
        if len(self.scores) < self.min_frames or self.seen % self.every:
            return None
        reading = drift_statistic(self.scores, self.reference, self.screen_threshold)
        self.log_crossing(reading)
        return reading

    def log_crossing(self, reading: DriftReading) -> None:
        above = reading.statistic > self.alarm
        if above and not self.drifting:
            log.warning("camera %s: screening scores drifted from the bundle's normal images: KS %.3f > %.3f over "
                        "%d frames (%d normal-looking, median score %.4g vs %.4g at calibration)", self.camera,
                        reading.statistic, self.alarm, reading.frames, reading.normal_looking, reading.median,
                        reading.reference_median)
        elif self.drifting and not above:
            log.info("camera %s: screening scores back in line with calibration: KS %.3f <= %.3f", self.camera,
                     reading.statistic, self.alarm)
        self.drifting = above


def format_reading(reading: DriftReading, alarm: float) -> str:
    verdict = "DRIFT" if reading.statistic > alarm else "no drift"
    median = f"{reading.median:.4g}" if reading.normal_looking else "none (every frame flagged)"
    return (f"{verdict}: KS {reading.statistic:.3f} (threshold {alarm:.3f}, p {reading.p_value:.3g}) over "
            f"{reading.frames} frame(s), {reading.normal_looking} normal-looking; median score "
            f"{median} vs {reading.reference_median:.4g} at calibration")
