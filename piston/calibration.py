"""The bundle's calibration: how logits become the confidence a person can read as a chance.

Fitted at training time on held-out predictions (training/calibrate.py) and stored in
`bundle.json`; serving, batch scoring and `piston predict` apply this one record, so every
edge turns the same logits into the same probabilities and the same review decision.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Calibration(BaseModel):
    """Temperature scaling plus the review band (a global and optional per-class thresholds)."""

    model_config = ConfigDict(frozen=True)

    temperature: float = Field(1.0, gt=0, description="logits are divided by it before softmax")
    threshold: float = Field(0.0, ge=0, le=1, description="confidence under it needs review")
    class_thresholds: dict[str, float] = Field(
        default_factory=dict, description="per predicted class, where one class is the hard one")

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for (N, C) logits (numerically stable softmax)."""
        scaled = np.asarray(logits, dtype=np.float64) / self.temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        exp = np.exp(scaled)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    def threshold_for(self, label: str) -> float:
        return self.class_thresholds.get(label, self.threshold)
