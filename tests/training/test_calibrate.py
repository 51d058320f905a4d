"""The review band: a threshold chosen on validation data, and what it does."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibrate import (
    calibrate,
    choose_threshold,
    expected_calibration_error,
    review_figures,
)


def probs_of(confidences: list[float], predicted: list[int], classes: int = 3) -> np.ndarray:
    rows = np.full((len(confidences), classes), 0.0)
    for row, (c, p) in enumerate(zip(confidences, predicted, strict=True)):
        rows[row] = (1 - c) / (classes - 1)
        rows[row, p] = c
    return rows


def test_the_threshold_is_the_lowest_confidence_that_keeps_errors_under_the_target() -> None:
    # sorted by confidence: right, right, right, wrong (0.7), right, wrong (0.5)
    probs = probs_of([0.99, 0.95, 0.9, 0.7, 0.6, 0.5], [0, 1, 2, 0, 1, 2])
    labels = np.array([0, 1, 2, 1, 1, 0])
    assert choose_threshold(probs, labels, 0.01) == pytest.approx(0.9)
    assert choose_threshold(probs, labels, 0.2) == pytest.approx(0.6)  # 1 error in 5
    assert choose_threshold(probs, labels, 0.5) == pytest.approx(0.5)  # accept everything


def test_edge_cases_of_the_threshold() -> None:
    empty = np.zeros((0, 3))
    assert choose_threshold(empty, np.zeros(0, dtype=int), 0.05) == 0.0
    all_wrong = probs_of([0.9, 0.8], [0, 0])
    assert choose_threshold(all_wrong, np.array([1, 1]), 0.05) == 1.0


def test_review_share_and_accepted_accuracy() -> None:
    probs = probs_of([0.99, 0.95, 0.9, 0.7, 0.6, 0.5], [0, 1, 2, 0, 1, 2])
    labels = np.array([0, 1, 2, 1, 1, 0])
    figures = review_figures(probs, labels, 0.9)
    assert figures["review_share"] == pytest.approx(0.5)
    assert figures["accepted_accuracy"] == 1.0 and figures["accepted"] == 3
    assert review_figures(probs, labels, 1.0)["accepted_accuracy"] is None


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy() -> None:
    # ten predictions at 0.8 confidence, eight of them right: perfectly calibrated
    probs = probs_of([0.8] * 10, [0] * 10)
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)
    # the same confidence with half of them wrong: off by 0.3
    assert expected_calibration_error(probs, np.array([0] * 5 + [1] * 5)) == pytest.approx(0.3)
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int)) is None


def test_calibrate_uses_validation_for_the_threshold_and_test_for_the_figures() -> None:
    val = probs_of([0.99, 0.6], [0, 0])
    test = probs_of([0.95, 0.7, 0.65], [1, 1, 1])
    out = calibrate(val, np.array([0, 1]), test, np.array([1, 1, 0]), 0.05, 0.5)
    assert out["threshold"] == pytest.approx(0.99) and out["threshold_source"] == "validation"
    assert out["review_share"] == pytest.approx(1.0)
    fixed = calibrate(val, np.array([0, 1]), test, np.array([1, 1, 0]), None, 0.68)
    assert fixed["threshold"] == 0.68 and fixed["threshold_source"] == "fixed"
    assert fixed["review_share"] == pytest.approx(1 / 3) and fixed["accepted_accuracy"] == 1.0
