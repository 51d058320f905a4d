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
from piston.explain import Explanation, explain
from piston.imaging import image_size, preprocess

if TYPE_CHECKING:
    from piston.bundle import Predictor


@dataclass(frozen=True)
class NetOutput:
    """What one forward pass gives for N images, whatever the runtime (torch, ONNX).

    `logits` are the raw class scores (averaged over the test-time views); `features` are the
    input of the classifier's last linear layer, averaged the same way. Calibration turns the
    logits into probabilities, the novelty check reads the features. `maps`, only when a
    heatmap was asked for, are the class activation maps (one per class, or Grad-CAM's one
    of the predicted class; see `piston.cam`), from which `piston.explain` draws the heatmap
    in numpy. `novelty`, when the runtime computed it with the network (the bundle's novelty
    check inside its graph, `piston.novelty_head`), is the novelty score `decide` answers;
    without it `decide` scores the features in numpy.
    """

    logits: np.ndarray  # (N, C) float32
    features: np.ndarray  # (N, D) float32
    maps: np.ndarray | None = None  # (N, C or 1, h, w) float32, only when explaining
    novelty: np.ndarray | None = None  # (N,) float32, when the graph holds the novelty check

    def __len__(self) -> int:
        return len(self.logits)

    def row(self, i: int) -> NetOutput:
        maps = self.maps[i:i + 1] if self.maps is not None else None
        novelty = self.novelty[i:i + 1] if self.novelty is not None else None
        return NetOutput(self.logits[i:i + 1], self.features[i:i + 1], maps, novelty)

    @classmethod
    def concat(cls, parts: Sequence[NetOutput]) -> NetOutput:
        return cls(np.concatenate([p.logits for p in parts]),
                   np.concatenate([p.features for p in parts]),
                   _concat_all([p.maps for p in parts]), _concat_all([p.novelty for p in parts]))


def _concat_all(arrays: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The arrays end to end when every part has one, else None."""
    present = [a for a in arrays if a is not None]
    return np.concatenate(present) if present and len(present) == len(arrays) else None


ReviewReason = Literal["low_confidence", "novel"]


class NoveltyScorer(Protocol):
    """How unlike the training images an image's features are; over `threshold` is novel."""

    threshold: float

    def score(self, features: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray: ...


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
    explanation: Explanation | None = None  # the heatmap, only when asked for


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
    never silently given a class. The novelty score is the runtime's (computed in its graph)
    when it gave one, else the bundle's scorer's on the features.
    """
    meta = predictor.meta
    calibration = meta.calibration
    probs = calibration.probabilities(out.logits)
    scorer = predictor.novelty
    novelty = (None if scorer is None
               else out.novelty if out.novelty is not None else scorer.score(out.features))
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


def explained(predictor: Predictor, out: NetOutput, decisions: Sequence[Decision],
              sizes: Sequence[tuple[int, int]]) -> list[Decision]:
    """The decisions with the heatmap of each one's class, at its image's (width, height)."""
    if out.maps is None:
        raise ValueError("the forward pass was run without explain: it has no feature maps")
    classes, method = predictor.meta.classes, predictor.explain_method
    return [d.model_copy(update={"explanation": explain(
        out.maps[i], classes.index(d.label), d.label, method, w, h)})
        for i, (d, (w, h)) in enumerate(zip(decisions, sizes, strict=True))]


def score_prepared(predictor: Predictor, prepared: Sequence[Prepared],
                   sizes: Sequence[tuple[int, int]] | None = None) -> list[Outcome]:
    """One forward pass over the decoded arrays; failures keep their slot, in order.

    With `sizes` (each image's original width and height, per slot) the decisions carry
    heatmaps.
    """
    arrays = [p for p in prepared if not isinstance(p, ImageFailure)]
    found: list[Decision] = []
    if arrays:
        out = predictor.forward(np.stack(arrays), explain=sizes is not None)
        found = decide(predictor, out)
        if sizes is not None:
            kept = [s for p, s in zip(prepared, sizes, strict=True)
                    if not isinstance(p, ImageFailure)]
            found = explained(predictor, out, found, kept)
    decisions: Iterator[Decision] = iter(found)
    return [p if isinstance(p, ImageFailure) else next(decisions) for p in prepared]


def score_blobs(predictor: Predictor, blobs: Sequence[bytes | ImageFailure], max_pixels: int,
                map_fn: MapFn = map, explain: bool = False) -> list[Outcome]:
    """Many blobs -> one `Decision` or `ImageFailure` each, in order (with heatmaps when
    `explain`).

    `map_fn` decodes the blobs (`map`, or a bounded thread pool's `map` to decode in parallel).
    """
    prepared = list(map_fn(lambda blob: prepare(blob, predictor, max_pixels), blobs))
    sizes = None
    if explain:
        sizes = [(0, 0) if isinstance(p, ImageFailure) or isinstance(b, ImageFailure)
                 else image_size(b, predictor.contract, max_pixels)
                 for p, b in zip(prepared, blobs, strict=True)]
    return score_prepared(predictor, prepared, sizes)
