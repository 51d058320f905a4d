"""Calibration and the review band: which predictions a person should look at.

The decision threshold is chosen on validation data, never on the test split: the lowest
confidence that keeps the error rate among the accepted predictions at or under a target.
Predictions under it are flagged "needs review". The test split then shows what that costs
(share sent to review) and buys (accuracy of the accepted ones), with the expected
calibration error saying how far confidence can be read as a probability.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 10


def choose_threshold(probs: np.ndarray, labels: np.ndarray, target_error: float) -> float:
    """The lowest confidence whose accepted set (confidence >= it) errs at most `target_error`.

    With no validation images there is nothing to learn from: 0.0 (accept everything). When
    even the most confident prediction is wrong, 1.0: everything goes to review.
    """
    if len(labels) == 0:
        return 0.0
    confidence = probs.max(1)
    order = np.argsort(-confidence, kind="stable")
    wrong = (probs.argmax(1) != labels)[order]
    error_rate = np.cumsum(wrong) / np.arange(1, len(wrong) + 1)
    ok = np.nonzero(error_rate <= target_error)[0]
    if len(ok) == 0:
        return 1.0
    last = int(ok[-1])
    # ties: a threshold equal to this confidence also accepts every equally confident image
    return float(confidence[order][last])


def review_figures(
    probs: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, float | int | None]:
    """Share sent to review and the accuracy of what is accepted (None when nothing is)."""
    if len(labels) == 0:
        return {"review_share": 0.0, "accepted_accuracy": None, "accepted": 0}
    accepted = probs.max(1) >= threshold
    right = probs.argmax(1) == labels
    return {
        "review_share": float(1.0 - accepted.mean()),
        "accepted_accuracy": float(right[accepted].mean()) if accepted.any() else None,
        "accepted": int(accepted.sum()),
    }


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


def calibrate(
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    test_probs: np.ndarray,
    test_labels: np.ndarray,
    target_error: float | None,
    fixed_threshold: float,
) -> dict[str, Any]:
    """The threshold (from validation, or the fixed one when no target is set) and what it does
    on the test split, plus the test split's expected calibration error."""
    if target_error is None:
        threshold, source = fixed_threshold, "fixed"
    else:
        threshold, source = choose_threshold(val_probs, val_labels, target_error), "validation"
    return {
        "threshold": threshold,
        "threshold_source": source,
        "target_error": target_error,
        **review_figures(test_probs, test_labels, threshold),
        "ece": expected_calibration_error(test_probs, test_labels),
    }
