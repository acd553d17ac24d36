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
