"""The fit says when its F2PAD pick is a near tie (calibration.pick_margin)."""

import logging

import numpy as np

from inspectd.bundle.calibration import pick_margin


def contributions(ious):
    return np.asarray(ious, float) / len(ious)  # one set: each image weighs 1/n


def test_a_clear_lead_is_not_a_near_tie():
    per_image = {"a": contributions([0.8, 0.7, 0.9, 0.75]), "b": contributions([0.5, 0.4, 0.6, 0.45]),
                 "c": contributions([0.1, 0.2, 0.1, 0.1])}
    pick = pick_margin(per_image, "a")
    assert pick["runner_up"] == "b" and pick["near_tie"] is False
    assert abs(pick["margin"] - 30.0) < 1e-6 and pick["standard_error"] == 0.0  # the same lead on every image


def test_a_lead_within_the_noise_is_a_near_tie_and_the_fit_warns(caplog):
    per_image = {"a": contributions([0.9, 0.2, 0.8, 0.3]), "b": contributions([0.3, 0.7, 0.2, 0.8])}
    with caplog.at_level(logging.WARNING, logger="inspectd.bundle.calibration"):
        pick = pick_margin(per_image, "a")
    assert pick["margin"] > 0 and pick["near_tie"] is True
    assert pick["margin"] < 2 * pick["standard_error"]
    assert "near tie" in caplog.text and "--defects DIR" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inspectd.bundle.calibration"):
        pick_margin(per_image, "a", labelled=True)  # labelled defects were already given: ask for more
    assert "larger --defects-n" in caplog.text


def test_a_single_candidate_has_no_runner_up():
    pick = pick_margin({"a": contributions([0.5, 0.6])}, "a")
    assert pick["runner_up"] is None and pick["near_tie"] is False


def test_an_iteration_cap_that_costs_the_large_defects_is_refused(monkeypatch):
    """A cap within a point of the uncapped solve on average, but a point and a half short on the
    larger half of the calibration defects, is not taken; the next cap, level on both, is."""
    from inspectd.bundle import calibration as cal
    from inspectd.deploy.inspector import ChainSettings
    from inspectd.refine import F2PADSettings

    areas = np.array([100, 200, 300, 400, 1000, 2000, 3000, 4000])
    truths = np.zeros((8, 80, 80), bool)
    for truth, area in zip(truths, areas):
        truth.flat[:area] = True
    sets = [("synthetic", np.zeros((8, 80, 80, 3), np.float32), truths)]
    uncapped = np.full(8, 0.6) / 8  # weighted contributions: mean IOU 0.6
    short_on_large = np.array([0.6] * 4 + [0.585] * 4) / 8  # 0.75 points lost overall, 1.5 on the larger half
    level = np.array([0.6] * 4 + [0.598] * 4) / 8
    per_cap = {40: short_on_large, 60: level}
    monkeypatch.setattr(cal, "solve_candidate", lambda m, p, r, chain, f2pad, *a: (f2pad.max_iters, []))
    monkeypatch.setattr(cal, "score_masks", lambda runs, probe_runs, s, mask, cap: (
        float(per_cap[runs].sum()), 50, [10], per_cap[runs]))
    chain = ChainSettings(screen_threshold=1.0, pixel_threshold=1.0, f2pad=F2PADSettings(max_iters=150))
    best = {"lam": 0.03, "tau": 0.05, "close_px": 4, "fill_holes": True, "min_defect_area_px": 60}
    chosen, tables, _ = cal.choose_max_iters(None, None, None, chain, sets, [], cal.CalibrationConfig(max_iters=(40, 60)),
                                             best, uncapped, 100, False)
    assert chosen["max_iters"] == 60 and chosen["min_defect_area_px"] == 50
    assert tables["max_iters"] == {"150": 60.0, "40": 59.25, "60": 59.9}
    assert tables["max_iters_large_half_loss"] == {"40": 1.5, "60": 0.2}


class MapsOf:
    """A stand-in detector whose maps are given: choose_peak_ratio only reads method.predict."""

    def __init__(self, maps):
        self.maps = np.asarray(maps, np.float32)

    def predict(self, images):
        return self.maps[: len(images)], self.maps[: len(images)].reshape(len(images), -1).max(1)


def test_the_coarse_peak_ratio_is_the_one_that_outlines_the_calibration_defects_best():
    """Maps that spread well beyond their defects (stronger defect, wider spread) get a ratio that
    cuts each region down; maps that match their defects keep the whole region (ratio 0, the first
    of equal ones)."""
    from inspectd.bundle.calibration import choose_peak_ratio
    from inspectd.deploy.inspector import ChainSettings

    yy, xx = np.mgrid[:64, :64]
    truths = np.stack([(yy - 32) ** 2 + (xx - 32) ** 2 <= r**2 for r in (5, 8, 11)])
    spread = np.stack([peak * np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * r**2))
                       for r, peak in zip((5, 8, 11), (3.0, 6.0, 9.0))])
    chain = ChainSettings(screen_threshold=0.05, pixel_threshold=0.1)
    images = np.zeros((3, 64, 64, 3), np.float32)
    ratio, table = choose_peak_ratio(MapsOf(spread), chain, [("synthetic", images, truths)], (0.0, 0.3, 0.5, 0.7))
    assert ratio > 0 and table[str(ratio)] > table["0.0"] + 20
    # a lead within the tolerance does not count: the smaller ratio (the wider region) is kept
    runner_up = max((r for r in (0.3, 0.5, 0.7) if r != ratio), key=lambda r: table[str(r)])
    lead = (table[str(ratio)] - table[str(runner_up)]) / 100
    kept, _ = choose_peak_ratio(MapsOf(spread), chain, [("synthetic", images, truths)], (0.0, 0.3, 0.5, 0.7),
                                tolerance=lead + 1e-3)
    assert lead > 0 and kept == min(ratio, runner_up)
    sharp = truths.astype(np.float32) * 5.0
    ratio, table = choose_peak_ratio(MapsOf(sharp), chain, [("synthetic", images, truths)], (0.0, 0.3, 0.5, 0.7))
    assert ratio == 0.0 and table["0.0"] == 100.0
