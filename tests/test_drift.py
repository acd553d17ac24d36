"""Score drift: the KS statistic (pure), the capture's monitor and gauge, and `inspectd drift` on
the demo line with the real model (ONNX screening of a fitted demo bundle)."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.data.images import write_image
from inspectd.data.textures import texture_parts
from inspectd.deploy.drift import DriftMonitor, drift_statistic
from inspectd.service.capture import Frame
from inspectd.service.capture_process import run_capture
from inspectd.service.metrics import ServiceMetrics

from conftest import DEMO_SIZE
from test_service_doubles import service_settings


# --- the statistic ---------------------------------------------------------------------------------
def test_same_distribution_is_low_and_a_shift_is_high():
    rng = np.random.default_rng(0)
    reference = rng.normal(1.0, 0.1, 40)
    threshold = 1.4
    same = drift_statistic(rng.normal(1.0, 0.1, 200), reference, threshold)
    shifted = drift_statistic(rng.normal(1.2, 0.1, 200), reference, threshold)
    assert same.statistic < 0.3 and same.p_value > 0.01
    assert shifted.statistic > 0.6 and shifted.p_value < 1e-6
    assert shifted.median > same.median


def test_defective_frames_above_the_threshold_do_not_count_as_drift():
    rng = np.random.default_rng(1)
    reference = rng.normal(1.0, 0.1, 40)
    line = np.concatenate([rng.normal(1.0, 0.1, 140), rng.uniform(2.0, 5.0, 60)])  # 30 % defects
    reading = drift_statistic(line, reference, threshold := 1.4)
    assert reading.statistic < 0.3 and reading.normal_looking == 140
    assert drift_statistic(line, reference, threshold).frames == 200


def test_most_frames_above_the_threshold_is_full_drift():
    reading = drift_statistic([2.0] * 8 + [1.0] * 2, [1.0, 1.1, 0.9], 1.5)
    assert reading.statistic == 1.0 and reading.normal_looking == 2


def test_no_scores_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        drift_statistic([], [1.0], 1.0)


def test_monitor_reads_every_n_frames_and_logs_each_crossing(caplog):
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(rng.normal(1.0, 0.1, 40), 1.4, window=50, min_frames=20, every=5, alarm=0.5, camera="c1")
    readings = [monitor.add(s) for s in rng.normal(1.0, 0.1, 30)]
    assert [i for i, r in enumerate(readings) if r is not None] == [19, 24, 29]  # from min_frames, every 5th
    with caplog.at_level(logging.INFO, logger="inspectd.deploy.drift"):
        shifted = [monitor.add(s) for s in rng.normal(1.3, 0.05, 60)]
        back = [monitor.add(s) for s in rng.normal(1.0, 0.1, 60)]
    assert shifted[-1].statistic > 0.9 and back[-1].statistic < 0.5
    messages = [r.getMessage() for r in caplog.records]
    assert sum("drifted" in m for m in messages) == 1 and sum("back in line" in m for m in messages) == 1


# --- the capture's gauge -------------------------------------------------------------------------------
def brightness(image: np.ndarray) -> tuple[np.ndarray, float]:
    """A screening stand-in whose score is the frame's mean brightness (enough to see a lighting change)."""
    return np.zeros(image.shape[:2], np.float32), float(image.mean())


def run_line(tmp_path, frames: list[np.ndarray], normal_scores: np.ndarray, threshold: float) -> ServiceMetrics:
    settings = service_settings(tmp_path, drift={"window": 60, "min_frames": 30, "every": 10, "threshold": 0.5})
    metrics, stop = ServiceMetrics("capture"), threading.Event()
    source = iter([Frame(f"testcam-{i}", "testcam", 0.0, image) for i, image in enumerate(frames)])
    seen = []

    def count(_frame, _flagged):
        seen.append(1)
        if len(seen) == len(frames):
            stop.set()

    run_capture(settings, brightness, stop, threshold=threshold, normal_scores=normal_scores, frames=source,
                metrics=metrics, on_frame=count)
    return metrics


def test_capture_exports_the_drift_gauge_and_logs_a_lighting_change(tmp_path, caplog):
    reference = np.array([brightness(p)[1] for p in texture_parts("brick", 40, 48, seed=7)])
    threshold = float(reference.max() * 1.5)
    parts = texture_parts("brick", 60, 48, seed=11)
    unchanged = run_line(tmp_path / "a", list(parts), reference, threshold)
    drift = unchanged.registry.get_sample_value("inspectd_score_drift", {"camera": "testcam"})
    assert drift is not None and drift < 0.5
    assert unchanged.registry.get_sample_value("inspectd_score_drift_threshold", {"camera": "testcam"}) == 0.5
    with caplog.at_level(logging.WARNING, logger="inspectd.deploy.drift"):
        brighter = run_line(tmp_path / "b", [np.clip(p * 1.25, 0, 1) for p in parts], reference, threshold)
    assert brighter.registry.get_sample_value("inspectd_score_drift", {"camera": "testcam"}) > 0.5
    assert any("drifted" in r.getMessage() for r in caplog.records)


def test_a_bundle_without_normal_scores_turns_drift_off_with_a_log_line(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="inspectd.service.capture_process"):
        metrics = run_line(tmp_path, list(texture_parts("brick", 40, 48, seed=3)), None, 10.0)
    assert metrics.registry.get_sample_value("inspectd_score_drift", {"camera": "testcam"}) is None
    assert any("drift monitor off" in r.getMessage() for r in caplog.records)


# --- `inspectd drift` on the demo line, real model ----------------------------------------------------------
# demo_bundle (conftest.py): the demo line's model, fitted once per test run, with its held-out normal scores


def demo_frames(n: int, seed: int = 5) -> list[np.ndarray]:
    """The demo line as the capture's demo source makes it: brick parts, 30 % with a pasted defect."""
    from inspectd.service.capture import open_source
    from inspectd.service.settings import CaptureSettings

    capture = CaptureSettings(source="demo", size=DEMO_SIZE, fps=0, max_frames=n,
                              demo={"defect_rate": 0.3, "seed": seed})
    return [f.image for f in open_source(capture, "demo", threading.Event())]


def write_folder(folder: Path, images) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        write_image(folder / f"{i:04d}.png", image)
    return folder


def drift_of(bundle: Path, folder: Path, capsys) -> tuple[float, str]:
    """`inspectd drift --model BUNDLE --data FOLDER`, as typed; the KS statistic it prints, and the line."""
    from inspectd.cli import main

    assert main(["drift", "--model", str(bundle), "--data", str(folder), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    match = re.search(r"(no drift|DRIFT): KS ([0-9.]+) \(threshold 0.500", printed)
    assert match and str(folder) in printed, printed
    return float(match.group(2)), printed.strip()


def test_inspectd_drift_sees_brightness_and_blur_shifts_of_the_demo_line_but_not_the_line_itself(
        demo_bundle, tmp_path, capsys):
    frames = demo_frames(80)
    unchanged = drift_of(demo_bundle, write_folder(tmp_path / "line", frames), capsys)
    # a lamp half as bright again; a camera out of focus
    brighter = drift_of(demo_bundle, write_folder(tmp_path / "bright", [np.clip(f * 1.5, 0, 1) for f in frames]),
                        capsys)
    blurred = drift_of(demo_bundle, write_folder(tmp_path / "blur", [cv2.GaussianBlur(f, (0, 0), 1.5)
                                                                      for f in frames]), capsys)
    print("\n".join(line for _, line in (unchanged, brighter, blurred)))
    assert unchanged[0] < 0.5, unchanged
    assert brighter[0] > 0.5 and blurred[0] > 0.5, (brighter, blurred)


# --- the reference in the bundle -----------------------------------------------------------------------
def test_fit_keeps_the_held_out_normal_scores_in_the_bundle(demo_bundle):
    from inspectd.bundle import load_calibration, load_normal_scores

    scores = load_normal_scores(demo_bundle)
    calibration = load_calibration(demo_bundle)
    fit = json.loads((demo_bundle / "fit.json").read_text())
    assert scores is not None and len(scores) == fit["n_holdout"] == calibration["evidence"]["n_holdout"]
    assert scores.max() == pytest.approx(calibration["evidence"]["normal_scores"]["max"], rel=1e-5)


def test_reference_missing_or_malformed(tmp_path):
    from inspectd.bundle import load_normal_scores
    from inspectd.bundle.assets import CALIBRATION_VERSION
    from inspectd.errors import BundleError

    (tmp_path / "calibration.json").write_text(json.dumps({"version": CALIBRATION_VERSION, "chain": {}}))
    assert load_normal_scores(tmp_path) is None  # fitted before the scores were kept: drift off
    (tmp_path / "calibration.json").write_text(json.dumps({"version": CALIBRATION_VERSION,
                                                           "drift_reference": {"normal_scores": [1.0, "x"]}}))
    with pytest.raises(BundleError, match="drift_reference.normal_scores"):
        load_normal_scores(tmp_path)
