"""Scoring a trained model: metrics, the review threshold, quality gates and loud warnings.

`evaluate_model` is shared by training and cross-validation. An evaluation where a class has
no test images is never a plain accuracy: it carries a warning and a failing gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from piston.bundle import Gate, gates_passed
from piston.figures import ClassFigures, ClassificationFigures
from piston.imaging import Contract
from piston.settings import Settings
from training.calibrate import CalibrationFigures, calibrate
from training.config import TrainConfig
from training.decode import DecodedSet
from training.train import contract_of, predict_logits

OVERFIT_GAP = 0.10


def _default(name: str) -> float:
    return float(Settings.model_fields[name].default)


@dataclass(frozen=True)
class GateBar:
    """The production-readiness bar; the defaults are the settings' (`PISTON_GATE_*`)."""

    min_accuracy: float = _default("gate_min_accuracy")
    min_class_f1: float = _default("gate_min_class_f1")
    min_class_recall: float = _default("gate_min_class_recall")

    @classmethod
    def from_settings(cls, settings: Settings) -> GateBar:
        return cls(settings.gate_min_accuracy, settings.gate_min_class_f1,
                   settings.gate_min_class_recall)


@dataclass
class Evaluation:
    """A model scored on a test split, calibrated on its validation split (`probs` are the
    calibrated test probabilities)."""

    metrics: ClassificationFigures
    calibration: CalibrationFigures
    gates: list[Gate]
    probs: np.ndarray
    predicted: np.ndarray
    contract: Contract
    warnings: list[str] = field(default_factory=list)

    @property
    def gates_passed(self) -> bool:
        return gates_passed(self.gates)


def evaluate_model(
    module: nn.Module, config: TrainConfig, val: DecodedSet, test: DecodedSet,
    classes: list[str], bar: GateBar,
) -> Evaluation:
    contract = contract_of(config)
    logits = predict_logits(module, test.images, contract)
    figures = calibrate(predict_logits(module, val.images, contract), val.labels, logits,
                        test.labels, classes, config.review_target_error,
                        config.decision_threshold)
    probs = figures.calibration().probabilities(logits) if len(logits) else logits
    predicted = probs.argmax(1) if len(test.labels) else np.zeros(0, dtype=np.int64)
    metrics = classification_metrics(test.labels, predicted, classes)
    warnings = missing_class_warnings(metrics, "test")
    return Evaluation(metrics, figures, quality_gates(metrics, bar), probs, predicted, contract,
                      warnings)


def missing_class_warnings(metrics: ClassificationFigures, where: str) -> list[str]:
    missing = metrics.missing()
    if not missing:
        return []
    return [f"NOT COMPARABLE: class(es) {', '.join(missing)} have no {where} images, so the"
            f" accuracy {metrics.accuracy:.3f} says nothing about them; the gates fail"]


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]
) -> ClassificationFigures:
    """Accuracy, macro-F1, the confusion matrix (rows = truth) and per-class P/R/F1."""
    n = len(classes)
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    per_class: dict[str, ClassFigures] = {}
    for i, name in enumerate(classes):
        tp = matrix[i, i]
        predicted, actual = matrix[:, i].sum(), matrix[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = ClassFigures(precision=float(precision), recall=float(recall),
                                       f1=float(f1), support=int(actual))
    total = matrix.sum()
    return ClassificationFigures(
        accuracy=float(np.trace(matrix) / total) if total else 0.0,
        macro_f1=float(np.mean([c.f1 for c in per_class.values()])),
        confusion_matrix=matrix.tolist(), per_class=per_class, support=int(total))


def quality_gates(metrics: ClassificationFigures, bar: GateBar) -> list[Gate]:
    """The production-readiness bar: every class present, accuracy, each class's F1 and recall."""
    gates = [Gate(name="accuracy", value=metrics.accuracy, threshold=bar.min_accuracy,
                  passed=metrics.accuracy > bar.min_accuracy)]
    for name, figures in metrics.per_class.items():
        gates += [
            Gate(name=f"support[{name}]", value=figures.support, threshold=1,
                 passed=figures.support >= 1),
            Gate(name=f"f1[{name}]", value=figures.f1, threshold=bar.min_class_f1,
                 passed=figures.f1 > bar.min_class_f1),
            Gate(name=f"recall[{name}]", value=figures.recall,
                 threshold=bar.min_class_recall, passed=figures.recall >= bar.min_class_recall),
        ]
    return gates


def overfitting_warning(train_accuracy: float, val_accuracy: float) -> str | None:
    gap = train_accuracy - val_accuracy
    if gap > OVERFIT_GAP:
        return (
            f"overfitting: train accuracy {train_accuracy:.3f} exceeds validation accuracy"
            f" {val_accuracy:.3f} by {gap * 100:.1f} points"
        )
    return None
