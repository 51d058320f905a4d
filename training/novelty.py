"""Fitting the novelty check: a model of the training images' head features, and its threshold.

The scorer (piston/novelty.py) measures how far an image's features lie from the training
images'; the threshold is chosen so that about `target` of familiar images (validation) are
flagged. A validation split holds 40-120 images, so its empirical 98th percentile is one or
two images: instead a log-normal tail is fitted to the validation scores and its quantile
taken (see `tail_threshold`).

The default check is `combined`: Mahalanobis (far from every class mean under the training
images' covariance) and kNN (unlike the nearest training images in direction). Each misses what
the other catches: on a texture model that standardises every image, noise and text sit near
the fabric's mean but point away from every training image (docs/evaluation.md). Each gets a
threshold at half the target, so that together they flag about the target.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch
from torch import nn

from piston.imaging import Contract
from piston.novelty import (
    ChannelScorer,
    CombinedScorer,
    KnnScorer,
    MahalanobisScorer,
    Method,
    NoveltyInfo,
    NoveltyPart,
    PartMethod,
    PartScorer,
    Scorer,
    unit_rows,
    with_threshold,
)
from training.decode import DecodedSet
from training.train import to_inputs

TARGET_SHARE = 0.02
MIN_VAL = 2  # scores to fit a tail to
KNN_K = 5
# training features the kNN check keeps (float16): 1 MB at 256 features, and a (32, 2048)
# similarity product costs ~1 ms CPU against ~250 ms for the forward pass of 32 images
KNN_BANK = 2048
DEFAULT_METHOD: Method = "combined"
# The channels check (combined, when the inputs are given): a small share, and a floor under
# its threshold: familiar photographs' channels correlate 0.63-1.0 (pistons, fabric), and a
# set of grey images (fabric: exactly 1) would otherwise get a threshold of ~0 that any
# colour in an image crosses
CHANNEL_SHARE = 0.005
CHANNEL_FLOOR = 0.5
# A floor under the kNN check's threshold: this share of the smallest cosine distance between
# two class means of the training features. A converged model's features collapse (a pill
# stand-in: familiar images 0.003 from their neighbours, the classes 0.3 apart), and a tail
# fitted to a few dozen validation scores then sits under familiar test images (22% and 6.8%
# of two test splits flagged; docs/evaluation.md, "Across data sets")
KNN_FLOOR = 0.1


def ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """The covariance of centred rows shrunk towards a scaled identity, and the shrinkage
    (Ledoit & Wolf 2004): with ~200 images of 128 features the sample covariance is singular."""
    n, d = centred.shape
    sample = centred.T @ centred / n
    mu = float(np.trace(sample)) / d
    squared = centred ** 2
    beta = float(((squared.T @ squared) / n - sample ** 2).sum()) / n
    delta = float(((sample - mu * np.eye(d)) ** 2).sum())
    shrink = 0.0 if delta == 0 else min(beta, delta) / delta
    return (1.0 - shrink) * sample + shrink * mu * np.eye(d), shrink


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, classes: int) -> MahalanobisScorer:
    """Class means and one shared Ledoit-Wolf covariance of the within-class deviations."""
    x = np.asarray(features, dtype=np.float64)
    present = [c for c in range(classes) if (labels == c).any()]
    means = np.stack([x[labels == c].mean(0) for c in present])
    centred = x - means[np.searchsorted(present, labels)]
    cov, _ = ledoit_wolf(centred)
    values, vectors = np.linalg.eigh(cov)
    floor = max(float(values.max()) * 1e-6, 1e-12)
    whiten = vectors / np.sqrt(np.maximum(values, floor))
    return MahalanobisScorer(means, whiten, math.inf)


def fit_knn(features: np.ndarray, k: int = KNN_K, bank: int = KNN_BANK,
            seed: int = 0) -> KnnScorer:
    """The training features as unit rows in float16, at most `bank` of them (a seeded draw):
    the scores here are those of the stored bank, so the threshold holds after loading."""
    x = np.asarray(features, dtype=np.float32)
    if len(x) > bank:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), bank, replace=False))]
    return KnnScorer(unit_rows(x).astype(np.float16), k, math.inf)


def fit_part(method: PartMethod, features: np.ndarray, labels: np.ndarray,
             classes: int) -> PartScorer:
    if method == "mahalanobis":
        return fit_mahalanobis(features, labels, classes)
    if method == "channels":
        return ChannelScorer(math.inf)  # nothing to fit: the threshold is all
    return fit_knn(features)


def knn_floor(features: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """`KNN_FLOOR` x the smallest cosine distance between two class means (0: one class)."""
    present = [c for c in range(classes) if (labels == c).any()]
    if len(present) < 2:
        return 0.0
    x = np.asarray(features, dtype=np.float64)
    means = unit_rows(np.stack([x[labels == c].mean(0) for c in present]))
    distance = 1.0 - means @ means.T
    return KNN_FLOOR * float(distance[np.triu_indices(len(present), 1)].min())


def tail_threshold(scores: np.ndarray, target: float = TARGET_SHARE) -> float:
    """The (1 - target) quantile of a log-normal fitted to familiar images' scores.

    With 40-120 validation images the empirical 98th percentile is the largest one or two
    scores and moves a lot with the split; the mean and spread of the log scores are stable,
    and distances to a fitted model have a light right tail that a log-normal follows.
    Never under the largest familiar score's neighbour at that rank, so a fit that comes out
    short still flags at most about `target` of these images.
    """
    logs = np.log(np.maximum(np.asarray(scores, dtype=np.float64), 1e-12))
    z = NormalDist().inv_cdf(1.0 - target)
    fitted = float(np.exp(logs.mean() + z * logs.std(ddof=1))) if len(logs) > 1 else math.inf
    empirical = float(np.quantile(scores, 1.0 - target)) if len(scores) else math.inf
    return max(fitted, empirical)


def flagged_share(scorer: Scorer, features: np.ndarray,
                  inputs: np.ndarray | None = None) -> float | None:
    if len(features) == 0:
        return None
    return float((scorer.score(features, inputs) > scorer.threshold).mean())


def head_features(module: nn.Module, images: np.ndarray, contract: Contract,
                  batch: int = 128) -> np.ndarray:
    """The features serving gets (`Embedder`: input of the last linear layer, TTA-averaged)
    of uint8 NCHW images."""
    return embed(module, to_inputs(images, contract), batch)


def embed(module: nn.Module, inputs: torch.Tensor, batch: int = 128) -> np.ndarray:
    """Head features of model inputs (normalised float NCHW)."""
    from piston.arch import Embedder

    embedder = Embedder(module).eval()
    with torch.inference_mode():
        parts = [embedder(chunk)[1] for chunk in inputs.split(batch)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0), dtype=np.float32)


def fit_for_bundle(module: nn.Module, contract: Contract, parts: dict[str, DecodedSet],
                   classes: int, method: Method = DEFAULT_METHOD,
                   target: float = TARGET_SHARE) -> tuple[Scorer, NoveltyInfo]:
    """The bundle's novelty check: fitted on train, threshold on val, figures on test."""
    val_in, test_in = (to_inputs(parts[n].images, contract) for n in ("val", "test"))
    train = head_features(module, parts["train"].images, contract)
    val, test = embed(module, val_in), embed(module, test_in)
    return fit_novelty(method, train, parts["train"].labels, val, test, classes, target,
                       inputs=(val_in.numpy(), test_in.numpy()))


def fit_novelty(method: Method, features: np.ndarray, labels: np.ndarray, val: np.ndarray,
                test: np.ndarray, classes: int, target: float = TARGET_SHARE,
                inputs: tuple[np.ndarray, np.ndarray] | None = None,
                ) -> tuple[Scorer, NoveltyInfo]:
    """Fit on the training features (and labels), threshold on validation, test shows it.

    `combined`: Mahalanobis and kNN, each thresholded at `target / 2`, novel when either is
    over (their flags overlap, so together they flag at most about `target`); with the
    validation and test images' model `inputs`, the channels check too, at `CHANNEL_SHARE`
    and never under `CHANNEL_FLOOR`.
    """
    # a tail needs two scores; with fewer validation images the training images' own scores
    # (lower than unseen ones': a threshold that flags more) stand in, and the record says so
    reference, source = (val, "validation") if len(val) >= MIN_VAL else (features, "training")
    methods: list[PartMethod] = ["mahalanobis", "knn"] if method == "combined" else [method]
    share = target / len(methods)
    floor = knn_floor(features, labels, classes) if "knn" in methods else 0.0
    checks = [thresholded(fit_part(m, features, labels, classes), reference, share,
                          floor if m == "knn" else 0.0)
              for m in methods]
    val_in, test_in = inputs if inputs is not None else (None, None)
    with_channels = method == "combined" and val_in is not None and len(val_in) >= MIN_VAL
    if with_channels:
        threshold = tail_threshold(ChannelScorer(math.inf).score(val, val_in), CHANNEL_SHARE)
        checks.append(ChannelScorer(max(threshold, CHANNEL_FLOOR)))
    scorer: Scorer = CombinedScorer(checks) if method == "combined" else checks[0]
    info = NoveltyInfo(
        method=method, threshold=scorer.threshold, target_share=target,
        threshold_source=f"log-normal tail of {len(reference)} {source} scores"
                         + (f", {share:.1%} per check" if len(checks) > 1 else "")
                         + (f" (kNN at least {floor:.3g}: {KNN_FLOOR} x the class means'"
                            " smallest cosine distance)" if floor > 0 else "")
                         + (f" ({CHANNEL_SHARE:.1%} and at least {CHANNEL_FLOOR} for channels)"
                            if with_channels else ""),
        val_flagged=flagged_share(scorer, val, val_in) or 0.0,
        test_flagged=flagged_share(scorer, test, test_in), fitted_on=len(features),
        parts=[NoveltyPart(method=c.method, threshold=c.threshold,
                           val_flagged=flagged_share(c, val, val_in) or 0.0,
                           test_flagged=flagged_share(c, test, test_in))
               for c in checks] if len(checks) > 1 else [])
    return scorer, info


def thresholded(check: PartScorer, reference: np.ndarray, share: float,
                floor: float = 0.0) -> PartScorer:
    """The check with the threshold that flags about `share` of familiar images, at least
    `floor`."""
    return with_threshold(check, max(tail_threshold(check.score(reference), share), floor))
