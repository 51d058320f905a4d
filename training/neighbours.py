"""Near-duplicates, calibrated on the data set itself.

Two images are near-duplicates when they are far closer than images of *this* data set
usually are: the bar is a fraction of how close images of two different classes come (the
5th percentile of every image's distance to its nearest neighbour in another class). Images
of different classes are different items by definition, so that distribution says what
"distinct but alike" looks like here: frames of one turning piston sit 30x closer than that,
while two pills of one type on a black background are alike everywhere and only true copies
fall under the bar. A fixed similarity cannot serve both.

When the defect itself is a large, consistent difference (a notch bitten out of every defect
part), cross-class distances are large and the bar can chain distinct but alike parts of one
class into one lump; so the bar is halved until no group holds more than 10 images or 10% of
its class. The signature is a 24x24 grayscale thumbnail, zero-mean and unit-norm, compared
under the eight flips and quarter turns (views of one piece of fabric are often turned
copies). The distance is 1 - correlation. Pairs of different classes under the bar are label
conflicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

SIDE = 24
BAR_FRACTION = 0.25  # of the cross-class reference distance
REFERENCE_QUANTILE = 0.05
EXACT = 1e-5  # distances under this are copies: left out of the reference (label conflicts)
BLOCK = 512  # rows per block: memory stays flat on large sets
MAX_GROUP = 10  # images: a near-duplicate group may always be this large ...
MAX_GROUP_SHARE = 0.10  # ... or this share of its class; larger means the bar chains alike items


@dataclass(frozen=True)
class Neighbours:
    """Near-duplicate components and the calibrated bar that made them."""

    components: np.ndarray  # a component id per image
    bar: float  # distances under this link two images
    reference: float  # the cross-class nearest-neighbour distance the bar is a fraction of
    conflicts: list[tuple[int, int, float]]  # (i, j, distance): near-copies, different classes


def signatures(images: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Zero-mean, unit-norm grayscale thumbnails of uint8 NCHW images, as (N, side, side)."""
    n, _, h, w = images.shape
    side = max(1, min(side, h, w))
    gray = images.astype(np.float32).mean(axis=1)
    ys = (np.arange(side + 1) * h) // side
    xs = (np.arange(side + 1) * w) // side
    rows = np.add.reduceat(gray, ys[:-1], axis=1) / np.diff(ys)[None, :, None]
    thumbs = np.add.reduceat(rows, xs[:-1], axis=2) / np.diff(xs)[None, None, :]
    flat = thumbs.reshape(n, -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-6)
    return flat.reshape(n, side, side)


def _views(thumbs: np.ndarray) -> list[np.ndarray]:
    """The eight flips and quarter turns of each thumbnail, flattened."""
    out = []
    for k in range(4):
        turned = np.rot90(thumbs, k, axes=(1, 2))
        out += [turned, turned[:, :, ::-1]]
    return [v.reshape(len(thumbs), -1) for v in out]


def _distance_blocks(thumbs: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(start, distances of rows start.. to every image), the diagonal set to infinity."""
    base = thumbs.reshape(len(thumbs), -1)
    views = _views(thumbs)
    for start in range(0, len(thumbs), BLOCK):
        stop = min(start + BLOCK, len(thumbs))
        sims = np.max([v[start:stop] @ base.T for v in views], axis=0)
        dist = np.clip(1.0 - sims, 0.0, None)
        dist[np.arange(stop - start), np.arange(start, stop)] = np.inf
        yield start, dist


def find_near_duplicates(images: np.ndarray, labels: np.ndarray) -> Neighbours:
    """Calibrate the bar on cross-class distances, then link every pair under it; halve the bar
    while linking chains a large share of a class into one group (alike items, not copies)."""
    thumbs = signatures(images)
    labels = np.asarray(labels)
    cross = np.full(len(images), np.inf, dtype=np.float32)
    for start, dist in _distance_blocks(thumbs):
        other = labels[start : start + len(dist), None] != labels[None, :]
        masked = np.where(other & (dist > EXACT), dist, np.inf)
        cross[start : start + len(dist)] = masked.min(axis=1)
    finite = cross[np.isfinite(cross)]
    reference = float(np.quantile(finite, REFERENCE_QUANTILE)) if len(finite) else 0.0
    bar = BAR_FRACTION * reference
    pairs = _pairs_under(thumbs, max(bar, EXACT))
    components = _components(len(images), pairs, bar)
    while bar > EXACT and _too_lumpy(components, labels):
        bar /= 2
        components = _components(len(images), pairs, bar)
    conflicts = [(a, b, d) for a, b, d in pairs
                 if d <= max(bar, EXACT) and labels[a] != labels[b]]
    return Neighbours(components, bar, reference, conflicts)


def _pairs_under(thumbs: np.ndarray, bar: float) -> list[tuple[int, int, float]]:
    pairs = []
    for start, dist in _distance_blocks(thumbs):
        for i, j in zip(*np.nonzero(dist <= bar), strict=True):
            a, b = int(i) + start, int(j)
            if a < b:
                pairs.append((a, b, float(dist[i, j])))
    return pairs


def _components(n: int, pairs: list[tuple[int, int, float]], bar: float) -> np.ndarray:
    parent = np.arange(n)
    for a, b, d in pairs:
        if d <= max(bar, EXACT):
            _union(parent, a, b)
    return np.array([_find(parent, i) for i in range(n)], dtype=np.int64)


def _too_lumpy(components: np.ndarray, labels: np.ndarray) -> bool:
    """A group holds more than max(10, 10%) of a class: that is chaining, not copies."""
    for label in np.unique(labels):
        members = components[labels == label]
        largest = int(np.unique(members, return_counts=True)[1].max())
        if largest > max(MAX_GROUP, MAX_GROUP_SHARE * len(members)):
            return True
    return False


def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = int(parent[x])
    return x


def _union(parent: np.ndarray, a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[ra] = rb
