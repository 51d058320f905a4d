"""The novelty check: how unlike the training images an image's head features are.

Training fits it on the training images' features (`NetOutput.features`: the input of the
classifier's last linear layer) and chooses its threshold on validation images
(training/novelty.py). The bundle carries the arrays as `novelty.npz` and the typed record
`NoveltyInfo` in `bundle.json`. The scorers here are numpy, a few small matrix products, so any
runtime that gives the features (torch, ONNX) gets the same scores; bundles exported since the
check moved into the graph compute the same scores with the network instead
(`piston.novelty_head`, the `novelty` output of model.onnx), and `decide` reads those.

Bundles trained since the combined check carry `method: combined`: a Mahalanobis check and a
kNN check, each with its own threshold, and an image is novel when either is over its own.
Since the channels check, a third reads the model's input instead of its features: how
uncorrelated the image's colour channels are (`ChannelScorer`), which a texture model that
standardises each image cannot see in its features (i.i.d. colour noise looks like fabric to
it, docs/evaluation.md).
Their `novelty` is one number, the larger of the two scores each divided by its threshold:
over 1 is novel, 2 is twice as far as the farther-reaching check allows. Older bundles carry
one method and answer its raw score (over `NoveltyInfo.threshold` is novel).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from piston.errors import RegistryError

NOVELTY_FILE = "novelty.npz"
CHANNEL_STRIDE = 4  # the channels check reads every fourth pixel of every fourth row
FLAT = 1e-3  # a channel's spread (the model's input units) under which it is flat
PartMethod = Literal["mahalanobis", "knn", "channels"]
Method = Literal["mahalanobis", "knn", "combined"]  # channels: only as part of combined


class NoveltyPart(BaseModel):
    """One check of a combined novelty model: its own threshold and what it flags alone."""

    model_config = ConfigDict(frozen=True)

    method: PartMethod
    threshold: float = Field(description="this check's score over it is novel")
    val_flagged: float = Field(description="share of the validation split this check flags")
    test_flagged: float | None = None


class NoveltyInfo(BaseModel):
    """What the bundle says about its novelty model (`BundleMeta.novelty`)."""

    model_config = ConfigDict(frozen=True)

    method: Method
    threshold: float = Field(description="a score over it is novel (combined: 1, the score is"
                             " each check's score divided by its own threshold)")
    target_share: float = Field(description="the share of familiar images meant to be flagged")
    threshold_source: str = Field(description="how the threshold was chosen")
    val_flagged: float = Field(description="share of the validation split over the threshold")
    test_flagged: float | None = Field(None, description="share of the test split over it")
    fitted_on: int = Field(description="training images the model was fitted on")
    parts: list[NoveltyPart] = Field(default_factory=list,
                                     description="combined: the checks, each with its threshold")
    file: str = NOVELTY_FILE


def rule(info: NoveltyInfo) -> str:
    """When an image is novel, in words: `mahalanobis over 30.6 or knn over 0.0912`."""
    checks: list[tuple[str, float]] = ([(p.method, p.threshold) for p in info.parts]
                                       or [(info.method, info.threshold)])
    return " or ".join(f"{method} over {threshold:.3g}" for method, threshold in checks)


class MahalanobisScorer:
    """The smallest Mahalanobis distance to a class mean, under one shared (shrunk) covariance.

    Stored as the class means and a whitening matrix `W` (precision = W Wᵀ), so a score is one
    (N, D) x (D, D) product and one (N, D) x (D, C) product.
    """

    method: PartMethod = "mahalanobis"

    def __init__(self, means: np.ndarray, whiten: np.ndarray, threshold: float) -> None:
        self.whiten = np.asarray(whiten, dtype=np.float32)
        self.centres = np.asarray(means, dtype=np.float32) @ self.whiten  # (C, D) whitened
        self.centre_norms = (self.centres ** 2).sum(1)
        self.means = np.asarray(means, dtype=np.float32)
        self.threshold = float(threshold)

    def score(self, features: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
        z = product(np.asarray(features, dtype=np.float32), self.whiten)
        d2 = (z ** 2).sum(1, keepdims=True) - 2.0 * product(z, self.centres.T) + self.centre_norms
        return np.sqrt(np.maximum(d2.min(1), 0.0))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"means": self.means, "whiten": self.whiten}


class KnnScorer:
    """One minus the mean cosine similarity to the `k` nearest training features: one
    (N, D) x (D, B) product against the bank of B stored features."""

    method: PartMethod = "knn"

    def __init__(self, bank: np.ndarray, k: int, threshold: float) -> None:
        self.stored = np.asarray(bank)  # as saved (float16 in combined bundles)
        self.bank = unit_rows(self.stored.astype(np.float32))
        self.k = int(min(k, len(self.bank)))
        self.threshold = float(threshold)

    def score(self, features: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
        sim = product(unit_rows(np.asarray(features, dtype=np.float32)), self.bank.T)
        top = -np.partition(-sim, self.k - 1, axis=1)[:, :self.k]
        return 1.0 - top.mean(1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"bank": self.stored, "k": np.asarray(self.k)}


class ChannelScorer:
    """One minus the mean correlation of an image's three colour channels, over its pixels.

    Photographs of parts and surfaces are lit by one light, so their channels move together
    (0.63-1.0 on the pistons and the fabric); i.i.d. colour noise has none (~0). Read from the
    model's input (N, 3, H, W): a per-channel normalisation leaves the correlation alone.
    Every fourth pixel of every fourth row (`CHANNEL_STRIDE`): a sixteenth of the work (half
    the check's cost in the graph against every other pixel), and still 400 pixels of an 80 px
    input, where colour noise's correlation is 0 +- 0.05. Computed in as few graph nodes as it
    allows (each costs ONNX Runtime a few microseconds, more than this arithmetic): the
    channels centred and scaled to unit spread, summed; the mean square of the sum is
    3 + 2 x (the three correlations), so the score is (9 - that) / 6. A channel spread under
    `FLAT` (a blank image: rounding noise, the same in each channel) is left unscaled, so a
    blank image scores 1.5.
    """

    method: PartMethod = "channels"

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def score(self, features: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
        if inputs is None:
            raise ValueError("the channels check reads the model's inputs, none were given")
        x = np.asarray(inputs, dtype=np.float32)[:, :, ::CHANNEL_STRIDE, ::CHANNEL_STRIDE]
        c = x - x.mean((2, 3), keepdims=True)
        spread = np.sqrt((c * c).mean((2, 3), keepdims=True))
        total = (c / np.maximum(spread, np.float32(FLAT))).sum(1)
        return (np.float32(9.0) - (total * total).mean((1, 2))) / np.float32(6.0)

    def arrays(self) -> dict[str, np.ndarray]:
        return {}


PartScorer = MahalanobisScorer | KnnScorer | ChannelScorer


class CombinedScorer:
    """Novel when any of its checks is over its own threshold.

    The score is the largest of the checks' scores each divided by its threshold, so it is
    over `threshold` (1) exactly when one of them is over its own.
    """

    method: Method = "combined"
    threshold = 1.0

    def __init__(self, parts: Sequence[PartScorer]) -> None:
        if len({p.method for p in parts}) != len(parts) or not parts:
            raise ValueError("a combined novelty check needs distinct checks")
        self.parts = list(parts)

    def score(self, features: np.ndarray, inputs: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        ratios = [p.score(x, inputs) / np.float32(max(p.threshold, 1e-12)) for p in self.parts]
        return np.maximum.reduce(ratios)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for p in self.parts for k, v in p.arrays().items()}  # distinct names


Scorer = MahalanobisScorer | KnnScorer | ChannelScorer | CombinedScorer


def needs_inputs(scorer: object) -> bool:
    """Whether the check reads the model's inputs besides the features (`ChannelScorer`)."""
    parts = scorer.parts if isinstance(scorer, CombinedScorer) else [scorer]
    return any(isinstance(p, ChannelScorer) for p in parts)


def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`a @ b` in numpy's own single-threaded loops, never OpenBLAS's threads: for a (32, 128)
    x (128, 128) product those spin for 40x the CPU time of the work itself (0.76 ms against
    0.02 ms, measured on 2 busy cores), taken from the inference threads of a loaded server."""
    return np.einsum("nd,dk->nk", a, b)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def with_threshold(scorer: PartScorer, threshold: float) -> PartScorer:
    """The same check with another threshold."""
    if isinstance(scorer, MahalanobisScorer):
        return MahalanobisScorer(scorer.means, scorer.whiten, threshold)
    if isinstance(scorer, ChannelScorer):
        return ChannelScorer(threshold)
    return KnnScorer(scorer.stored, scorer.k, threshold)


def save(scorer: Scorer, path: Path) -> None:
    with path.open("wb") as handle:
        np.savez(handle, allow_pickle=False, **scorer.arrays())


def load(model_dir: str | Path, info: NoveltyInfo) -> Scorer:
    """The bundle's scorer; a missing or unreadable file is a `RegistryError`."""
    path = Path(model_dir) / info.file
    try:
        with np.load(path) as arrays:
            if info.method != "combined":
                return load_part(info.method, arrays, info.threshold)
            return CombinedScorer([load_part(p.method, arrays, p.threshold) for p in info.parts])
    except (OSError, KeyError, ValueError) as err:
        raise RegistryError(f"the bundle's novelty model {path.name} cannot be read: {err}"
                            ) from None


def load_part(method: PartMethod, arrays: np.lib.npyio.NpzFile, threshold: float) -> PartScorer:
    if method == "mahalanobis":
        return MahalanobisScorer(arrays["means"], arrays["whiten"], threshold)
    if method == "channels":
        return ChannelScorer(threshold)
    return KnnScorer(arrays["bank"], int(arrays["k"]), threshold)
