"""Scoring, once: image blobs -> decoded arrays -> one forward pass -> typed decisions.

The CLI, the batch workers, retraining's champion/challenger comparison and the service all
score through these pieces, so a failed image, the stacking and the needs-review decision
are handled the same way everywhere. The service wraps `prepare` and `decide` around its
async batcher; everything else calls `score_blobs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from piston.errors import InputError
from piston.imaging import preprocess

if TYPE_CHECKING:
    from piston.bundle import Predictor


@dataclass(frozen=True)
class NetOutput:
    """What one forward pass gives for N images, whatever the runtime (torch, ONNX).

    `logits` are the raw class scores (averaged over the test-time views); `features` are the
    input of the classifier's last linear layer, averaged the same way. Calibration turns the
    logits into probabilities, the novelty check reads the features.
    """

    logits: np.ndarray  # (N, C) float32
    features: np.ndarray  # (N, D) float32

    def __len__(self) -> int:
        return len(self.logits)

    def row(self, i: int) -> NetOutput:
        return NetOutput(self.logits[i:i + 1], self.features[i:i + 1])

    @classmethod
    def concat(cls, parts: Sequence[NetOutput]) -> NetOutput:
        return cls(np.concatenate([p.logits for p in parts]),
                   np.concatenate([p.features for p in parts]))


ReviewReason = Literal["low_confidence", "novel"]


class NoveltyScorer(Protocol):
    """How unlike the training images an image's features are; over `threshold` is novel."""

    threshold: float

    def score(self, features: np.ndarray) -> np.ndarray: ...


class Decision(BaseModel):
    """What the model says about one image, and whether a person should look at it."""

    model_config = ConfigDict(frozen=True)

    label: str
    confidence: float
    probabilities: dict[str, float]
    needs_review: bool
    review_reason: ReviewReason | None = None
    novelty: float | None = None
    novel: bool = False
    model_version: str


class ImageFailure(BaseModel):
    """An image that could not be scored: the one-line reason and its kind (see errors.py)."""

    model_config = ConfigDict(frozen=True)

    error: str
    kind: str

    @classmethod
    def of(cls, err: InputError) -> ImageFailure:
        return cls(error=err.reason, kind=err.kind)


Outcome = Decision | ImageFailure
Prepared = np.ndarray | ImageFailure
MapFn = Callable[[Callable[[bytes | ImageFailure], Prepared], Iterable[bytes | ImageFailure]],
                 Iterable[Prepared]]


def prepare(blob: bytes | ImageFailure, predictor: Predictor, max_pixels: int) -> Prepared:
    """Decode and preprocess one blob for `predictor`; a bad image becomes an `ImageFailure`."""
    if isinstance(blob, ImageFailure):
        return blob  # already failed upstream (unreadable, too large)
    try:
        return preprocess(blob, predictor.contract, max_pixels)
    except InputError as err:
        return ImageFailure.of(err)


def decide(predictor: Predictor, out: NetOutput) -> list[Decision]:
    """Label, calibrated confidence, all probabilities, novelty and the review flag, per row.

    A novel image always needs review (its reason `novel` wins over `low_confidence`): it is
    never silently given a class.
    """
    meta = predictor.meta
    calibration = meta.calibration
    probs = calibration.probabilities(out.logits)
    scorer = predictor.novelty
    novelty = scorer.score(out.features) if scorer is not None else None
    decisions = []
    for i, row in enumerate(probs):
        best = int(row.argmax())
        label, confidence = meta.classes[best], float(row[best])
        score = float(novelty[i]) if novelty is not None else None
        novel = scorer is not None and score is not None and score > scorer.threshold
        reason: ReviewReason | None = (
            "novel" if novel
            else "low_confidence" if confidence < calibration.threshold_for(label) else None)
        decisions.append(Decision(
            label=label,
            confidence=confidence,
            probabilities={c: float(p) for c, p in zip(meta.classes, row, strict=True)},
            needs_review=reason is not None,
            review_reason=reason,
            novelty=score,
            novel=novel,
            model_version=meta.version,
        ))
    return decisions


def score_prepared(predictor: Predictor, prepared: Sequence[Prepared]) -> list[Outcome]:
    """One forward pass over the decoded arrays; failures keep their slot, in order."""
    arrays = [p for p in prepared if not isinstance(p, ImageFailure)]
    decisions: Iterator[Decision] = iter(
        decide(predictor, predictor.forward(np.stack(arrays))) if arrays else [])
    return [p if isinstance(p, ImageFailure) else next(decisions) for p in prepared]


def score_blobs(predictor: Predictor, blobs: Sequence[bytes | ImageFailure], max_pixels: int,
                map_fn: MapFn = map) -> list[Outcome]:
    """Many blobs -> one `Decision` or `ImageFailure` each, in order.

    `map_fn` decodes the blobs (`map`, or a bounded thread pool's `map` to decode in parallel).
    """
    prepared = list(map_fn(lambda blob: prepare(blob, predictor, max_pixels), blobs))
    return score_prepared(predictor, prepared)
