"""Scoring, once: image blobs -> decoded arrays -> one forward pass -> typed decisions.

The CLI, the batch workers, retraining's champion/challenger comparison and the service all
score through these pieces, so a failed image, the stacking and the needs-review decision
are handled the same way everywhere. The service wraps `prepare` and `decide` around its
async batcher; everything else calls `score_blobs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

from piston.errors import InputError
from piston.imaging import preprocess

if TYPE_CHECKING:
    from piston.bundle import Predictor


class Decision(BaseModel):
    """What the model says about one image."""

    model_config = ConfigDict(frozen=True)

    label: str
    confidence: float
    probabilities: dict[str, float]
    needs_review: bool
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


def decide(predictor: Predictor, probs: np.ndarray) -> list[Decision]:
    """Label, confidence, all probabilities and the needs-review flag, one per row."""
    meta = predictor.meta
    decisions = []
    for row in probs:
        best = int(row.argmax())
        confidence = float(row[best])
        decisions.append(Decision(
            label=meta.classes[best],
            confidence=confidence,
            probabilities={c: float(p) for c, p in zip(meta.classes, row, strict=True)},
            needs_review=confidence < meta.threshold,
            model_version=meta.version,
        ))
    return decisions


def score_prepared(predictor: Predictor, prepared: Sequence[Prepared]) -> list[Outcome]:
    """One forward pass over the decoded arrays; failures keep their slot, in order."""
    arrays = [p for p in prepared if not isinstance(p, ImageFailure)]
    decisions: Iterator[Decision] = iter(
        decide(predictor, predictor.probabilities(np.stack(arrays))) if arrays else [])
    return [p if isinstance(p, ImageFailure) else next(decisions) for p in prepared]


def score_blobs(predictor: Predictor, blobs: Sequence[bytes | ImageFailure], max_pixels: int,
                map_fn: MapFn = map) -> list[Outcome]:
    """Many blobs -> one `Decision` or `ImageFailure` each, in order.

    `map_fn` decodes the blobs (`map`, or a bounded thread pool's `map` to decode in parallel).
    """
    prepared = list(map_fn(lambda blob: prepare(blob, predictor, max_pixels), blobs))
    return score_prepared(predictor, prepared)
