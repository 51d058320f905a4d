"""The record of one training run: every figure its report shows, `train --json` prints and
`metrics.json` and the bundle's `metrics` hold. Built once (`training.pipeline.describe`),
read by attribute."""

from __future__ import annotations

from pydantic import Field

from piston.bundle import Gate
from piston.figures import ClassificationFigures
from piston.novelty import NoveltyInfo
from training.calibrate import CalibrationFigures
from training.check import DataFigures
from training.search import SearchRow


class RunFigures(ClassificationFigures):
    """The test split's figures (the fields of `ClassificationFigures`) and how the run went."""

    calibration: CalibrationFigures
    gates: list[Gate]
    classes: list[str]
    split: str = Field(description="grouped or random")
    support_by_split: dict[str, dict[str, int]] = Field(
        description="images of each class in train, val and test")
    input_size: list[int]
    candidate: str = Field(description="the recipe trained (auto: the one it chose)")
    search: list[SearchRow] = Field(default_factory=list, description="auto's candidates")
    data: DataFigures = Field(description="what the data check found")
    epochs: int
    stopped: str
    best_epoch: int
    train_accuracy: float
    val_accuracy: float
    warnings: list[str] = Field(default_factory=list)
    novelty: NoveltyInfo | None = None

    def review(self) -> dict[str, float | None]:
        """Review share, accepted accuracy and calibrated ECE: shown wherever accuracy is."""
        cal = self.calibration
        return {"review_share": cal.review_share, "accepted_accuracy": cal.accepted_accuracy,
                "ece": cal.ece}
