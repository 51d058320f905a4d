"""The data check run before every training (and by `piston data check`).

It counts, warns about imbalance and tiny classes, lists what could not be decoded, and finds
exact and near duplicates. Near duplicates matter here: the piston photos are frames of parts
turning in front of a camera, so neighbouring frames are near-copies and must never straddle
a train/test split. Their groups feed the leakage-aware split.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from training.decode import DecodedSet

IMBALANCE_RATIO = 3.0
MIN_CLASS_IMAGES = 50
NEAR_DUP_SIMILARITY = 0.99  # tuned on the piston set: groups are frames of one turning part


@dataclass
class DataReport:
    counts: dict[str, int]
    warnings: list[str]
    excluded: list[tuple[str, str]]
    exact_duplicates: list[list[str]]
    near_duplicate_groups: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "images": sum(self.counts.values()),
            "counts": self.counts,
            "warnings": self.warnings,
            "excluded": [{"key": k, "reason": r} for k, r in self.excluded],
            "exact_duplicates": self.exact_duplicates,
            "near_duplicate_groups": len(self.near_duplicate_groups),
            "largest_near_duplicate_group": max(map(len, self.near_duplicate_groups), default=0),
            "notes": self.notes,
        }


def thumbnails(images: np.ndarray, side: int = 16) -> np.ndarray:
    """Zero-mean, unit-norm grayscale thumbnails: their dot product is a correlation."""
    n, _, h, w = images.shape
    gray = images.astype(np.float32).mean(axis=1)
    ys = (np.arange(side + 1) * h) // side
    xs = (np.arange(side + 1) * w) // side
    rows = np.add.reduceat(gray, ys[:-1], axis=1) / np.diff(ys)[None, :, None]
    thumbs = np.add.reduceat(rows, xs[:-1], axis=2) / np.diff(xs)[None, None, :]
    flat = thumbs.reshape(n, -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.maximum(norms, 1e-6)


def near_duplicate_components(
    images: np.ndarray, similarity: float = NEAR_DUP_SIMILARITY
) -> np.ndarray:
    """A component id per image: images linked by similarity above the bar share one."""
    n = len(images)
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    thumbs = thumbnails(images)
    for start in range(0, n, 1024):  # blocks keep memory flat on large sets
        sims = thumbs[start : start + 1024] @ thumbs.T
        for i, j in zip(*np.nonzero(sims > similarity), strict=True):
            a, b = find(int(i) + start), find(int(j))
            if a != b:
                parent[a] = b
    return np.array([find(i) for i in range(n)])


def split_groups(decoded: DecodedSet, similarity: float = NEAR_DUP_SIMILARITY) -> list[str]:
    """One group name per image: the manifest's `group` merged with near-duplicate links."""
    components = near_duplicate_components(decoded.images, similarity)
    by_group: dict[str, int] = {}
    for i, group in enumerate(decoded.groups):  # images sharing a manifest group are linked too
        if group is not None:
            first = by_group.setdefault(group, i)
            components[components == components[i]] = components[first]
    return [f"g{c}" for c in components]


def check(decoded: DecodedSet, classes: list[str], groups: list[str]) -> DataReport:
    """Counts, warnings and duplicate lists for a decoded data set."""
    counts = {c: 0 for c in classes}
    for label in decoded.labels:
        counts[classes[int(label)]] += 1
    warnings = []
    present = [n for n in counts.values() if n > 0]
    if present and max(present) > IMBALANCE_RATIO * min(present):
        warnings.append(
            f"class imbalance: the largest class has {max(present)} images,"
            f" more than {IMBALANCE_RATIO:g}x the smallest ({min(present)})"
        )
    for name, n in counts.items():
        if n < MIN_CLASS_IMAGES:
            warnings.append(
                f"class {name} has {n} images, under {MIN_CLASS_IMAGES}: below a proof of concept"
            )
    by_digest: dict[str, list[str]] = {}
    for key, digest in zip(decoded.keys, decoded.digests, strict=True):
        by_digest.setdefault(digest, []).append(key)
    exact = [sorted(keys) for keys in by_digest.values() if len(keys) > 1]
    members: dict[str, list[str]] = {}
    for key, group in zip(decoded.keys, groups, strict=True):
        members.setdefault(group, []).append(key)
    near = [sorted(keys) for keys in members.values() if len(keys) > 1]
    if exact:
        warnings.append(f"{len(exact)} sets of byte-identical images")
    if decoded.failures:
        warnings.append(f"{len(decoded.failures)} files could not be decoded and are left out")
    return DataReport(counts, warnings, decoded.failures, exact, near, _odd_images(decoded))


def _odd_images(decoded: DecodedSet) -> list[str]:
    notes = []
    sizes = Counter(info.size for info in decoded.infos)
    modes = Counter(info.mode for info in decoded.infos)
    formats = Counter(info.format for info in decoded.infos)
    if len(sizes) > 1:
        common = sizes.most_common(1)[0][0]
        odd = [
            k for k, info in zip(decoded.keys, decoded.infos, strict=True) if info.size != common
        ]
        notes.append(f"{len(odd)} images differ from the common size {common}: e.g. {odd[:3]}")
    for mode, n in modes.items():
        if mode != "RGB":
            notes.append(f"{n} images in mode {mode}, converted to RGB")
    if len(formats) > 1:
        notes.append(f"mixed formats: {dict(formats)}")
    return notes
