"""The training figures a bundle carries (`BundleMeta.metrics`), typed for its readers.

Training builds them (`training.evaluate`, `training.pipeline.describe`); the registry, the
service, the console and the drift watch read them by attribute. The report's other sections
(search, data check, warnings...) ride along as extra fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ClassFigures(BaseModel):
    """One class: precision, recall and F1 of its predictions."""

    precision: float
    recall: float
    f1: float
    support: int = Field(description="images of this class")


class ClassificationFigures(BaseModel):
    """Predictions scored against the truth: what `classification_metrics` measures on any
    split (a training run's test split, a fold, a retrain's comparison)."""

    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassFigures]
    confusion_matrix: list[list[int]] = Field(description="rows = truth")
    support: int = Field(description="images scored")

    def missing(self) -> list[str]:
        """The classes with no image to score."""
        return [name for name, f in self.per_class.items() if f.support == 0]


class ReviewFigures(BaseModel):
    """What the calibration does on the test split (the rest of `CalibrationFigures` too)."""

    model_config = ConfigDict(extra="allow")

    review_share: float | None = None
    accepted_accuracy: float | None = None
    ece: float | None = None


class TrainingMetrics(BaseModel):
    """The test split's figures and how the run went; None where a bundle did not measure it."""

    model_config = ConfigDict(extra="allow")

    accuracy: float | None = None
    macro_f1: float | None = None
    per_class: dict[str, ClassFigures] = Field(default_factory=dict)
    confusion_matrix: list[list[int]] = Field(default_factory=list, description="rows = truth")
    support: int = Field(0, description="test images")
    calibration: ReviewFigures | None = None
    novelty: dict[str, Any] | None = None
    split: str | None = None
    best_epoch: int | None = None
    val_accuracy: float | None = None

    def review(self) -> dict[str, float | None]:
        """Review share, accepted accuracy and calibrated ECE: shown wherever accuracy is."""
        cal = self.calibration or ReviewFigures()
        return {"review_share": cal.review_share, "accepted_accuracy": cal.accepted_accuracy,
                "ece": cal.ece}

    def headline(self) -> dict[str, Any]:
        """The figures listed beside a bundle (`/admin/models`, `/model`), those it has."""
        out = {"accuracy": self.accuracy, "macro_f1": self.macro_f1,
               "val_accuracy": self.val_accuracy, "split": self.split,
               "best_epoch": self.best_epoch}
        return {k: v for k, v in out.items() if v is not None}
