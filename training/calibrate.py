"""Calibration and the review band: confidence a person can read as a chance, and which
predictions a person should look at.

Everything works on logits held out from training (the validation split, never the test
split), so the bundle's `piston.calibration.Calibration` turns the same logits into the same
decision at every edge:

1. Temperature scaling, fitted by minimising the negative log-likelihood of the validation
   labels. Label smoothing and class weighting compress a network's confidences; the
   temperature undoes that. A weak prior on log T (centred on T = 1) and bounds keep a tiny or
   perfectly separated validation split from driving T to 0 (every confidence 1.0).
2. The review threshold: the lowest calibrated confidence whose accepted set is estimated to
   err at most `target_error`. The estimate blends the errors counted among the accepted
   validation images with the errors the calibrated confidences expect there, as if
   `PRIOR_IMAGES` (200) more images had been seen: on 40 validation images one unlucky error
   no longer sends most parts to review, and on thousands the count decides. (Redrawing
   40-image splits of a calibrated model 200 times, the review share's 10-90% range was
   0.04-0.64 counting errors only, 0.10-0.19 blended; tests/training/test_calibrate.py.)
   Where every validation image may be accepted, the threshold goes on under the least
   confident of them while the estimate holds with one more image accepted there (a new image
   falls under all k validation images with chance 1/(k+1)).
3. A threshold per predicted class, higher or lower than the global one: the error budget is
   shared among the classes so that the most validation images are accepted while the errors
   estimated among all of them stay at the target (each class's estimate blended as above,
   its expectation weighing its share of the `PRIOR_IMAGES`). Where one class carries the
   errors (the hard class) its threshold goes up and the others' go down. The global
   threshold stays for classes never predicted on validation.

The test split then shows what that costs (share sent to review) and buys (accuracy of the
accepted ones), and the expected calibration error says how far confidence reads as a chance.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from piston.calibration import Calibration

ECE_BINS = 10
T_BOUNDS = (0.05, 20.0)  # a temperature outside these says the validation split is degenerate
T_PRIOR = 1.0  # weight of (log T)^2 against the summed NLL: a couple of images' worth
PRIOR_IMAGES = 200.0  # how many images' worth the calibrated expectation weighs in the estimate
PRICES = 400  # prices of an estimated error scanned when sharing the budget among classes


class CalibrationFigures(BaseModel):
    """The fitted calibration and what it does: the data of the report's review band."""

    model_config = ConfigDict(frozen=True)

    # defaults: the figures of bundles trained before calibration (a threshold, no temperature)
    temperature: float = 1.0
    threshold: float
    class_thresholds: dict[str, float] = Field(default_factory=dict)
    threshold_source: Literal["validation", "fixed"]
    target_error: float | None
    val_images: int = 0
    review_share: float  # test images sent to review
    accepted_accuracy: float | None  # of the test images accepted (None when none is)
    accepted: int
    ece: float | None  # of the calibrated test confidences
    ece_uncalibrated: float | None = None  # of the plain softmax, for comparison
    # the rule before calibration, on the same model: plain softmax, the threshold the lowest
    # confidence whose accepted validation images err at most the target (errors counted)
    plain_review_share: float | None = None
    plain_accepted_accuracy: float | None = None

    def calibration(self) -> Calibration:
        """The record the bundle carries."""
        return Calibration(temperature=self.temperature, threshold=self.threshold,
                           class_thresholds=self.class_thresholds)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    if len(logits) == 0:
        return np.zeros((0, *np.shape(logits)[1:]), dtype=np.float32)
    return Calibration(temperature=temperature).probabilities(logits)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    scaled = scaled - scaled.max(1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(1))
    return float((log_norm - scaled[np.arange(len(labels)), labels]).sum())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, prior: float = T_PRIOR) -> float:
    """The temperature minimising the validation NLL plus `prior * (log T)^2`, within bounds.

    The NLL is convex in 1/T, so a golden-section search over log T finds the minimum. No
    images: 1.0 (nothing to learn from).
    """
    if len(labels) == 0:
        return 1.0
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)

    def cost(log_t: float) -> float:
        return _nll(logits, labels, math.exp(log_t)) + prior * log_t * log_t

    low, high = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    cost_a, cost_b = cost(a), cost(b)
    for _ in range(60):  # the bracket shrinks to ~1e-12 of log T
        if cost_a <= cost_b:
            high, b, cost_b = b, a, cost_a
            a = high - ratio * (high - low)
            cost_a = cost(a)
        else:
            low, a, cost_a = a, b, cost_b
            b = low + ratio * (high - low)
            cost_b = cost(b)
    return float(math.exp((low + high) / 2))


def accepted_error_estimates(
    probs: np.ndarray, labels: np.ndarray, prior_images: float = PRIOR_IMAGES
) -> tuple[np.ndarray, np.ndarray]:
    """Confidence sorted high to low, and for each k the estimated error rate of the k most
    confident: counted errors and calibrated expected errors blended, the expectation
    weighing `prior_images` images."""
    confidence = probs.max(1)
    order = np.argsort(-confidence, kind="stable")
    wrong = (probs.argmax(1) != labels)[order].astype(np.float64)
    expected = 1.0 - confidence[order].astype(np.float64)
    k = np.arange(1, len(order) + 1, dtype=np.float64)
    expected_rate = np.cumsum(expected) / k
    estimate = (np.cumsum(wrong) + prior_images * expected_rate) / (k + prior_images)
    return confidence[order], estimate


def choose_threshold(
    probs: np.ndarray, labels: np.ndarray, target_error: float,
    prior_images: float = PRIOR_IMAGES,
) -> float:
    """The lowest confidence whose accepted set (confidence >= it) is estimated to err at most
    `target_error` (see `accepted_error_estimates`; `prior_images=0` counts errors only).

    No validation images: 0.0 (accept everything). When even the most confident prediction is
    estimated over the target: 1.0, everything goes to review.
    """
    if len(labels) == 0:
        return 0.0
    confidence, estimate = accepted_error_estimates(probs, labels, prior_images)
    ok = np.nonzero(estimate <= target_error)[0]
    if len(ok) == 0:
        return 1.0
    # ties: a threshold equal to this confidence also accepts every equally confident image
    return float(confidence[int(ok[-1])])


def below_validation(
    probs: np.ndarray, labels: np.ndarray, threshold: float, target_error: float,
    prior_images: float = PRIOR_IMAGES,
) -> float:
    """Where every validation image may be accepted, how far under the least confident of them
    the threshold may go: as far as the estimate still holds with one more image accepted at
    the threshold's confidence (a new image falls under all k validation images with chance
    1/(k+1)). Otherwise the threshold unchanged.

    Without it a perfect validation split stops the threshold at its least confident image,
    and every test image less sure than that goes to a person (on the pistons' grouped folds
    10% of the test images; 0.9% with it, one accepted error in 565).
    """
    if len(labels) == 0:
        return threshold
    confidence = probs.max(1)
    if threshold > float(confidence.min()):
        return threshold  # some validation images are refused: no room under them
    k = len(labels) + 1.0
    errors = float((probs.argmax(1) != labels).sum())
    expected = float((1.0 - confidence).sum())
    # (errors + u + m (expected + u) / k) / (k + m) <= target, solved for u = 1 - threshold
    room = (target_error * (k + prior_images) * k - errors * k - prior_images * expected) / (
        k + prior_images)
    return min(threshold, max(0.0, 1.0 - room))


def _class_estimates(
    probs: np.ndarray, labels: np.ndarray, mine: np.ndarray, prior_images: float
) -> tuple[np.ndarray, np.ndarray]:
    """One predicted class's confidences (high to low) and its estimated errors among its k
    most confident, k = 0..n (the estimate of `accepted_error_estimates` times k)."""
    confidence, estimate = accepted_error_estimates(probs[mine], labels[mine], prior_images)
    return confidence, np.concatenate([[0.0], estimate * np.arange(1, len(estimate) + 1)])


def _most_accepted(errors: list[np.ndarray], target_error: float) -> list[int]:
    """How many of each class's most confident images to accept: the most in all whose
    estimated errors stay within `target_error` of them, pooled over the classes.

    A scan over the price of one estimated error: at price mu each class takes the k that
    maximises k - mu * (errors(k) - target * k), which is cheap for any number of classes;
    the most accepted pooled choice within the budget wins. None fits: [0, ...]."""
    prices = np.concatenate([[0.0], np.geomspace(1e-2, 1e4, PRICES)])
    takes = []
    for cumulative in errors:
        k = np.arange(len(cumulative), dtype=np.float64)
        gain = k[None, :] * (1 + 1e-9) - prices[:, None] * (cumulative[None, :]
                                                             - target_error * k[None, :])
        takes.append(gain.argmax(1))  # ties: the larger k
    excess = sum(cumulative[take] - target_error * take
                 for cumulative, take in zip(errors, takes, strict=True))
    total = sum(takes)
    fits = np.nonzero(np.asarray(excess) <= 1e-12)[0]
    if len(fits) == 0:
        return [0] * len(errors)
    best = int(fits[np.argmax(np.asarray(total)[fits])])
    return [int(take[best]) for take in takes]


def class_thresholds(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], target_error: float,
    prior_images: float = PRIOR_IMAGES,
) -> dict[str, float]:
    """A threshold per predicted class, higher or lower than the global one, that accepts the
    most validation images while the errors estimated among all accepted stay at the target.

    Each class's estimate blends its own counted errors with its calibrated expectation, the
    expectation weighing the class's share of `prior_images`. Where one class carries the
    errors (fabric: every miss is a stain called defect_free), its threshold goes up and the
    reliable class's goes down, and the error budget is spent where it buys the most accepted
    images; a one-sided raise spent none of it elsewhere and sent more to review at an error
    well under the target (docs/evaluation.md). A class whose every validation image is
    accepted goes under its least sure one as far as the pooled estimate still holds with one
    more image accepted there (as `below_validation`). Classes never predicted on validation
    keep the global threshold (absent here)."""
    predicted = probs.argmax(1)
    present = [index for index in range(len(classes)) if (predicted == index).any()]
    if not present:
        return {}
    shares = {index: prior_images * float((predicted == index).mean()) for index in present}
    estimates = [_class_estimates(probs, labels, predicted == index, shares[index])
                 for index in present]
    takes = _most_accepted([errors for _, errors in estimates], target_error)
    accepted = float(sum(takes))
    spent = sum(float(errors[take]) for (_, errors), take in zip(estimates, takes, strict=True))
    out: dict[str, float] = {}
    for index, (confidence, errors), take in zip(present, estimates, takes, strict=True):
        if take == 0:
            out[classes[index]] = 1.0
            continue
        bar = float(confidence[take - 1])
        if take == len(confidence):  # all of the class accepted: room under its least sure
            mine = predicted == index
            k, prior = take + 1.0, shares[index]
            wrong = float((predicted[mine] != labels[mine]).sum())
            expected = float((1.0 - confidence).sum())
            # the class's estimated errors with one more image of error chance u, less u
            own = (k * wrong + prior * expected) / (k + prior)
            room = target_error * (accepted + 1.0) - (spent - float(errors[take])) - own
            bar = min(bar, max(0.0, 1.0 - room))
        out[classes[index]] = bar
    return out


def review_figures(
    probs: np.ndarray, labels: np.ndarray, calibration: Calibration, classes: list[str]
) -> tuple[float, float | None, int]:
    """Share sent to review, the accuracy of what is accepted (None when nothing is), and how
    many are accepted, under the global and per-class thresholds."""
    if len(labels) == 0:
        return 0.0, None, 0
    predicted = probs.argmax(1)
    bars = np.array([calibration.threshold_for(name) for name in classes])
    accepted = probs.max(1) >= bars[predicted]
    right = predicted == labels
    return (float(1.0 - accepted.mean()),
            float(right[accepted].mean()) if accepted.any() else None, int(accepted.sum()))


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float | None:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    if len(labels) == 0:
        return None
    confidence = probs.max(1)
    right = (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(right[members].mean() - confidence[members].mean())
    return float(total)


def fit_calibration(
    logits: np.ndarray, labels: np.ndarray, classes: list[str], target_error: float | None,
    fixed_threshold: float,
) -> Calibration:
    """Temperature, global and per-class thresholds from held-out logits (or the fixed
    threshold, without temperature, when no target is set)."""
    if target_error is None:
        return Calibration(threshold=fixed_threshold)
    if len(labels) == 0:  # nothing held out to learn from: accept everything, plain softmax
        return Calibration(threshold=0.0)
    temperature = fit_temperature(logits, labels)
    probs = softmax(logits, temperature)
    threshold = below_validation(probs, labels, choose_threshold(probs, labels, target_error),
                                 target_error)
    return Calibration(temperature=temperature, threshold=threshold,
                       class_thresholds=class_thresholds(probs, labels, classes, target_error))


def calibrate(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    classes: list[str],
    target_error: float | None,
    fixed_threshold: float,
) -> CalibrationFigures:
    """The calibration (from validation logits) and what it does on the test split."""
    calibration = fit_calibration(val_logits, val_labels, classes, target_error,
                                  fixed_threshold)
    test_probs = softmax(test_logits, calibration.temperature)
    share, accepted_accuracy, accepted = review_figures(test_probs, test_labels, calibration,
                                                        classes)
    plain_share, plain_accuracy = None, None
    if target_error is not None and len(test_labels):
        plain = Calibration(threshold=choose_threshold(softmax(val_logits), val_labels,
                                                       target_error, prior_images=0))
        plain_share, plain_accuracy, _ = review_figures(softmax(test_logits), test_labels, plain,
                                                        classes)
    return CalibrationFigures(
        temperature=calibration.temperature,
        threshold=calibration.threshold,
        class_thresholds=calibration.class_thresholds,
        threshold_source="fixed" if target_error is None else "validation",
        target_error=target_error,
        val_images=len(val_labels),
        review_share=share,
        accepted_accuracy=accepted_accuracy,
        accepted=accepted,
        ece=expected_calibration_error(test_probs, test_labels),
        ece_uncalibrated=(expected_calibration_error(softmax(test_logits), test_labels)
                          if len(test_labels) else None),
        plain_review_share=plain_share,
        plain_accepted_accuracy=plain_accuracy,
    )


def redrawn_figures(
    val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
    test_labels: np.ndarray, classes: list[str], target_error: float, redraws: int,
    seed: int = 0,
) -> tuple[float, float | None]:
    """The review share (mean) and accepted error (pooled: accepted errors over accepted
    images) of the rule when the held-out images are redrawn `redraws` times into validation
    and test parts of the same sizes, fitted on the first, counted on the second.

    One test split of ~100 images moves a point per error; the redraws give the error a user
    meets in expectation (how the rule was chosen, docs/evaluation.md)."""
    logits = np.concatenate([val_logits, test_logits])
    labels = np.concatenate([val_labels, test_labels])
    rng = np.random.default_rng(seed)
    shares, errors, accepted = [], 0.0, 0
    for _ in range(redraws):
        order = rng.permutation(len(labels))
        val, test = order[:len(val_labels)], order[len(val_labels):]
        calibration = fit_calibration(logits[val], labels[val], classes, target_error, 0.0)
        share, accuracy, taken = review_figures(calibration.probabilities(logits[test]),
                                                labels[test], calibration, classes)
        shares.append(share)
        errors += taken * (1.0 - (accuracy or 0.0))
        accepted += taken
    return (float(np.mean(shares)) if shares else 0.0,
            errors / accepted if accepted else None)
