"""Scoring a model's predictions: accuracy, macro-F1, confusion matrix, per class, and gates."""

from __future__ import annotations

from typing import Any

import numpy as np

from piston.bundle import Gate

OVERFIT_GAP = 0.10


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, the confusion matrix (rows = truth) and per-class P/R/F1."""
    n = len(classes)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = matrix[i, i]
        predicted, actual = matrix[:, i].sum(), matrix[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(actual),
        }
    total = matrix.sum()
    return {
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class,
        "support": int(total),
    }


def quality_gates(
    metrics: dict[str, Any], min_accuracy: float, min_class_f1: float, min_class_recall: float
) -> list[Gate]:
    """The production-readiness bar: accuracy, and every class's F1 and recall."""
    gates = [
        Gate(
            name="accuracy",
            value=metrics["accuracy"],
            threshold=min_accuracy,
            passed=metrics["accuracy"] > min_accuracy,
        )
    ]
    for name, figures in metrics["per_class"].items():
        gates.append(
            Gate(
                name=f"f1[{name}]",
                value=figures["f1"],
                threshold=min_class_f1,
                passed=figures["f1"] > min_class_f1,
            )
        )
        gates.append(
            Gate(
                name=f"recall[{name}]",
                value=figures["recall"],
                threshold=min_class_recall,
                passed=figures["recall"] >= min_class_recall,
            )
        )
    return gates


def overfitting_warning(train_accuracy: float, val_accuracy: float) -> str | None:
    gap = train_accuracy - val_accuracy
    if gap > OVERFIT_GAP:
        return (
            f"overfitting: train accuracy {train_accuracy:.3f} exceeds validation accuracy"
            f" {val_accuracy:.3f} by {gap * 100:.1f} points"
        )
    return None
