"""Stratified train/val/test splits that keep groups (near-duplicates, parts) on one side.

A split never lies by omission: every class is in train, validation and test. When the
groups make that impossible (a class whose images all sit in one or two groups), the largest
such group is cut into runs of neighbouring images and the split says so.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from piston.errors import DataError

FRACTIONS = (0.70, 0.15, 0.15)
PIECES = 7  # a cut group becomes this many runs: enough to deal 70/15/15


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    cut_groups: tuple[str, ...] = ()  # groups cut so that every class is in every split

    def parts(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}


def grouped_split(
    labels: np.ndarray,
    groups: list[str],
    fractions: tuple[float, float, float] = FRACTIONS,
    seed: int = 0,
) -> Split:
    """Whole groups to train/val/test, each class near `fractions`, every class in every split."""
    counts = Counter(int(v) for v in labels)
    few = {label: n for label, n in counts.items() if n < 3}
    if few:
        raise DataError(
            f"class(es) {sorted(few)} have fewer than 3 images: train, validation and test"
            " each need one; add images or drop the class"
        )
    groups = list(groups)
    cut: list[str] = []
    while True:
        parts = _deal(labels, groups, fractions, seed)
        missing = [label for label in sorted(counts)
                   if any(not np.any(labels[p] == label) for p in parts)]
        if not missing:
            return Split(parts[0], parts[1], parts[2], tuple(cut))
        victim = _largest_group_of(labels, groups, missing[0])
        cut.append(victim)
        groups = _cut(groups, victim)


def _deal(
    labels: np.ndarray, groups: list[str], fractions: tuple[float, float, float], seed: int
) -> list[np.ndarray]:
    """Groups are dealt per majority class, largest first in a seeded order, each to the split
    whose share of that class is furthest below its target."""
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    by_class: dict[int, list[str]] = defaultdict(list)
    for group, idx in members.items():
        majority = Counter(int(labels[i]) for i in idx).most_common(1)[0][0]
        by_class[majority].append(group)
    parts: list[list[int]] = [[], [], []]
    for label in sorted(by_class):
        names = sorted(by_class[label])
        order = rng.permutation(len(names))
        names = sorted((names[i] for i in order), key=lambda g: -len(members[g]))  # stable
        total = sum(len(members[g]) for g in names)
        taken = [0, 0, 0]
        for step, group in enumerate(names):
            if step < 3 and len(names) >= 3:
                target = [2, 1, 0][step]  # first seed test, then val, then train with one group
            else:
                deficits = [fractions[k] * total - taken[k] for k in range(3)]
                target = int(np.argmax(deficits))
            parts[target].extend(members[group])
            taken[target] += len(members[group])
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def _largest_group_of(labels: np.ndarray, groups: list[str], label: int) -> str:
    sizes = Counter(g for g, v in zip(groups, labels, strict=True) if int(v) == label)
    splittable = [(n, g) for g, n in sizes.items() if n > 1]
    if not splittable:
        raise DataError(f"class {label} cannot be placed in every split")  # < 3 images: refused
    return max(splittable)[1]


def _cut(groups: list[str], victim: str) -> list[str]:
    """Cut one group into runs of neighbouring images (data set order keeps frames together)."""
    idx = [i for i, g in enumerate(groups) if g == victim]
    out = list(groups)
    for piece, chunk in enumerate(np.array_split(np.array(idx), min(PIECES, len(idx)))):
        for i in chunk:
            out[int(i)] = f"{victim}/{piece}"
    return out


def random_split(labels: np.ndarray, seed: int = 0) -> Split:
    """The plain stratified random split (what the published 98.25% was measured on)."""
    return grouped_split(labels, [str(i) for i in range(len(labels))], seed=seed)


def support(labels: np.ndarray, split: Split, classes: list[str]) -> dict[str, dict[str, int]]:
    """Images of each class in each part: what every report shows next to its figures."""
    return {name: {c: int(np.sum(labels[idx] == k)) for k, c in enumerate(classes)}
            for name, idx in split.parts().items()}
