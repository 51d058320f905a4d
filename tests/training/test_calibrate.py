"""Calibration and the review band on synthetic logits: the temperature, a threshold that
holds still on small validation splits, and a higher threshold for the hard class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from piston.calibration import Calibration
from training.calibrate import (
    T_BOUNDS,
    CalibrationFigures,
    below_validation,
    calibrate,
    choose_threshold,
    class_thresholds,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    redrawn_figures,
    review_figures,
    softmax,
)

CLASSES = ["a", "b", "c"]


def probs_of(confidences: Sequence[float] | np.ndarray, predicted: Sequence[int] | np.ndarray,
             classes: int = 3) -> np.ndarray:
    confidence = np.asarray(confidences, dtype=np.float64)
    rows = np.repeat(((1 - confidence) / (classes - 1))[:, None], classes, axis=1)
    rows[np.arange(len(rows)), np.asarray(predicted, dtype=np.int64)] = confidence
    return rows


def drawn(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Labels drawn from softmax(logits / temperature): the truth of a miscalibrated model."""
    cumulative = np.cumsum(softmax(logits, temperature).astype(np.float64), axis=1)
    picked = (rng.random((len(logits), 1)) * cumulative[:, -1:] > cumulative).sum(1)
    return np.minimum(picked, logits.shape[1] - 1)


def test_the_fitted_temperature_recovers_a_known_one() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (4000, 3))
    for true in (0.5, 2.0):
        labels = drawn(logits, true, rng)
        assert fit_temperature(logits, labels) == pytest.approx(true, rel=0.1)


def test_a_tiny_or_perfect_validation_split_keeps_a_sane_temperature() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]] * 3)
    labels = np.array([0, 1, 2] * 3)  # every one right: the NLL alone would send T to 0
    t = fit_temperature(logits, labels)
    assert T_BOUNDS[0] < t < 1.0
    assert softmax(logits, t).max() < 0.99999  # the prior keeps confidence short of certainty
    wrong = fit_temperature(logits, np.array([1, 2, 0] * 3))  # every one wrong: flatten
    assert 1.0 < wrong <= T_BOUNDS[1]


def test_the_count_only_threshold_is_the_lowest_confidence_that_keeps_errors_under_target() -> None:
    # sorted by confidence: right, right, right, wrong (0.7), right, wrong (0.5)
    probs = probs_of([0.99, 0.95, 0.9, 0.7, 0.6, 0.5], [0, 1, 2, 0, 1, 2])
    labels = np.array([0, 1, 2, 1, 1, 0])
    assert choose_threshold(probs, labels, 0.01, prior_images=0) == pytest.approx(0.9)
    assert choose_threshold(probs, labels, 0.2, prior_images=0) == pytest.approx(0.6)
    assert choose_threshold(probs, labels, 0.5, prior_images=0) == pytest.approx(0.5)


def test_edge_cases_of_the_threshold() -> None:
    empty = np.zeros((0, 3))
    assert choose_threshold(empty, np.zeros(0, dtype=int), 0.05) == 0.0
    all_wrong = probs_of([0.6, 0.55], [0, 0])
    assert choose_threshold(all_wrong, np.array([1, 1]), 0.05) == 1.0


def population(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A calibrated model that is right 95% of the time: most images confident, a tail not."""
    confidence = np.where(rng.random(n) < 0.85, rng.uniform(0.97, 1.0, n),
                          rng.uniform(0.4, 0.97, n))
    predicted = rng.integers(0, 3, n)
    right = rng.random(n) < confidence
    labels = np.where(right, predicted, (predicted + 1 + rng.integers(0, 2, n)) % 3)
    return probs_of(confidence, predicted), labels


def test_the_review_band_holds_still_when_a_small_validation_split_is_redrawn() -> None:
    rng = np.random.default_rng(1)
    big_probs, big_labels = population(20000, rng)

    def on_population(threshold: float) -> tuple[float, float]:
        share, accuracy, _ = review_figures(big_probs, big_labels,
                                            Calibration(threshold=threshold), CLASSES)
        return share, 1.0 - (accuracy or 0.0)

    blended, counted = [], []
    for _ in range(200):  # 200 validation splits of 40 images
        probs, labels = population(40, rng)
        blended.append(on_population(choose_threshold(probs, labels, 0.02)))
        counted.append(on_population(choose_threshold(probs, labels, 0.02, prior_images=0)))
    shares, errors = np.array(blended).T
    counted_shares = np.array(counted)[:, 0]
    spread = np.subtract(*np.percentile(shares, [90, 10]))
    assert spread < 0.3 * np.subtract(*np.percentile(counted_shares, [90, 10]))
    assert np.percentile(shares, 90) < 0.25 < np.percentile(counted_shares, 90)
    assert np.median(errors) <= 0.02 and np.percentile(errors, 90) < 0.03


def test_a_perfect_validation_split_lets_the_threshold_go_under_its_least_sure_image() -> None:
    probs = probs_of([0.99] * 30 + [0.9] * 3, [0] * 33)
    labels = np.zeros(33, dtype=int)
    threshold = choose_threshold(probs, labels, 0.02)
    assert threshold == pytest.approx(0.9)  # the least confident validation image
    lower = below_validation(probs, labels, threshold, 0.02)
    assert 1 / 3 < lower < 0.9  # room for one more image, less sure, in the error budget
    # a split that already refuses some images leaves no room under them
    some_wrong = probs_of([0.99] * 30 + [0.6] * 3, [0] * 33)
    wrong = np.array([0] * 30 + [1] * 3)
    refused = choose_threshold(some_wrong, wrong, 0.02)
    assert refused > 0.6 and below_validation(some_wrong, wrong, refused, 0.02) == refused
    # the more validation images, the more room
    many = probs_of([0.99] * 300 + [0.9] * 30, [0] * 330)
    assert below_validation(many, np.zeros(330, dtype=int), 0.9, 0.02) < lower


def test_a_hard_class_gets_a_higher_threshold_and_the_others_lower_ones() -> None:
    rng = np.random.default_rng(2)
    n = 300
    predicted = np.repeat([0, 1, 2], n // 3)
    confidence = np.full(n, 0.995)
    confidence[predicted == 2] = rng.uniform(0.9, 1.0, n // 3)
    probs = probs_of(confidence, predicted)
    labels = predicted.copy()
    hard = np.nonzero((predicted == 2) & (confidence < 0.96))[0]
    labels[hard[: len(hard) // 2]] = 0  # class c errs far more than its confidence says
    threshold = choose_threshold(probs, labels, 0.02)
    own = class_thresholds(probs, labels, CLASSES, 0.02)
    assert set(own) == set(CLASSES)
    # a and b never err: every one of them accepted, the bar under their least sure image
    assert own["a"] < 0.995 and own["b"] < 0.995 and own["c"] > max(own["a"], own["b"])
    share, accuracy, accepted = review_figures(
        probs, labels, Calibration(threshold=threshold, class_thresholds=own), CLASSES)
    alone, _, accepted_alone = review_figures(probs, labels, Calibration(threshold=threshold),
                                              CLASSES)
    # the budget a and b leave unspent goes to c: more accepted than one global threshold
    assert accepted > accepted_alone and share < alone
    assert accuracy is not None and accuracy >= 0.96  # c's counted errors, shrunk, still bite
    # never predicted on validation: no threshold of its own (the global one applies)
    assert "c" not in class_thresholds(probs[:200], labels[:200], CLASSES, 0.02)
    # nothing fits: every predicted class goes to review
    assert class_thresholds(probs_of([0.6] * 4, [0] * 4), np.ones(4, dtype=int), CLASSES,
                            0.02) == {"a": 1.0}


def skewed(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """As `population`, but predictions of class c err three times as often as their
    confidence says and those of a and b a third as often (fabric: every miss is a stain
    called defect_free)."""
    confidence = np.where(rng.random(n) < 0.85, rng.uniform(0.97, 1.0, n),
                          rng.uniform(0.4, 0.97, n))
    predicted = rng.integers(0, 3, n)
    miss = np.where(predicted == 2, np.minimum(1.0, 3 * (1 - confidence)), 0.3 * (1 - confidence))
    right = rng.random(n) >= miss
    labels = np.where(right, predicted, (predicted + 1 + rng.integers(0, 2, n)) % 3)
    return probs_of(confidence, predicted), labels


def test_class_thresholds_keep_the_target_on_redrawn_splits_and_send_fewer_to_review() -> None:
    """The property that decided the rule: over 200 redrawn 120-image validation splits of a
    model whose errors sit in one class, the accepted images of a large population err at most
    the target (pooled), where the global threshold alone overshoots it, and fewer go to
    review than with the global threshold alone."""
    rng = np.random.default_rng(4)
    big_probs, big_labels = skewed(20000, rng)
    big_logits = np.log(big_probs)
    rows = []
    for _ in range(200):
        probs, labels = skewed(120, rng)
        calibration = fit_calibration(np.log(probs), labels, CLASSES, 0.02, 0.5)
        calibrated = calibration.probabilities(big_logits)
        alone = Calibration(temperature=calibration.temperature,
                            threshold=calibration.threshold)
        row = []
        for rule in (calibration, alone):
            share, accuracy, accepted = review_figures(calibrated, big_labels, rule, CLASSES)
            row += [share, accepted * (1 - (accuracy or 0.0)), accepted]
        rows.append([*row, calibration.threshold_for("c") > calibration.threshold_for("a")])
    table = np.array(rows, dtype=np.float64)
    error = table[:, 1].sum() / table[:, 2].sum()
    error_alone = table[:, 4].sum() / table[:, 5].sum()
    assert error <= 0.021 < error_alone
    assert table[:, 0].mean() < table[:, 3].mean()
    assert table[:, 6].mean() > 0.75  # the hard class's threshold is the higher one


def test_review_share_and_accepted_accuracy() -> None:
    probs = probs_of([0.99, 0.95, 0.9, 0.7, 0.6, 0.5], [0, 1, 2, 0, 1, 2])
    labels = np.array([0, 1, 2, 1, 1, 0])
    share, accuracy, accepted = review_figures(probs, labels, Calibration(threshold=0.9),
                                               CLASSES)
    assert share == pytest.approx(0.5) and accuracy == 1.0 and accepted == 3
    assert review_figures(probs, labels, Calibration(threshold=1.0), CLASSES)[1] is None
    by_class = Calibration(threshold=0.6, class_thresholds={"a": 0.8})  # drops the 0.7 error
    assert review_figures(probs, labels, by_class, CLASSES)[:2] == (pytest.approx(1 / 3), 1.0)


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy() -> None:
    probs = probs_of([0.8] * 10, [0] * 10)  # 0.8 confidence, eight of ten right
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([0] * 5 + [1] * 5)) == pytest.approx(0.3)
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int)) is None


def test_calibrate_fits_on_validation_logits_and_reports_the_test_split() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (3000, 3)) * 3  # an overconfident model: truth at T = 3
    labels = drawn(logits, 3.0, rng)
    figures = calibrate(logits[:1000], labels[:1000], logits[1000:], labels[1000:], CLASSES,
                        0.02, 0.5)
    assert isinstance(figures, CalibrationFigures) and figures.threshold_source == "validation"
    assert figures.temperature == pytest.approx(3.0, rel=0.15)
    assert figures.ece is not None and figures.ece_uncalibrated is not None
    assert figures.ece < 0.05 < figures.ece_uncalibrated
    assert figures.accepted_accuracy is not None and figures.accepted_accuracy >= 0.96
    assert figures.val_images == 1000
    assert figures.accepted == round(2000 * (1 - figures.review_share))
    assert figures.calibration() == Calibration(temperature=figures.temperature,
                                                threshold=figures.threshold,
                                                class_thresholds=figures.class_thresholds)
    empty = calibrate(np.zeros((0, 3)), np.zeros(0, dtype=int), logits[:5], labels[:5], CLASSES,
                      0.02, 0.5)  # no validation images: accept all, plain softmax
    assert empty.threshold == 0.0 and empty.temperature == 1.0 and empty.review_share == 0.0
    fixed = calibrate(logits[:10], labels[:10], logits[10:20], labels[10:20], CLASSES, None, 0.6)
    assert fixed.threshold == 0.6 and fixed.temperature == 1.0 and fixed.threshold_source == "fixed"


def test_redrawn_figures_score_the_rule_on_redrawn_held_out_parts() -> None:
    rng = np.random.default_rng(6)
    probs, labels = skewed(240, rng)
    logits = np.log(probs)
    share, error = redrawn_figures(logits[:120], labels[:120], logits[120:], labels[120:],
                                   CLASSES, 0.02, 20)
    assert 0.0 < share < 0.6 and error is not None and error < 0.06
    assert redrawn_figures(logits[:120], labels[:120], logits[120:], labels[120:], CLASSES,
                           0.02, 20) == (share, error)  # seeded
    assert redrawn_figures(logits[:120], labels[:120], logits[120:], labels[120:], CLASSES,
                           0.02, 0) == (0.0, None)
