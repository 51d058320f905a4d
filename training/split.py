"""Stratified train/val/test splits that keep groups (near-duplicates, parts) on one side."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def grouped_split(
    labels: np.ndarray,
    groups: list[str],
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
    seed: int = 0,
) -> Split:
    """Assign whole groups to train/val/test so that each class lands near `fractions`.

    Groups are dealt per majority class, largest first in a seeded order, each to the split
    whose share of that class is furthest below its target. A plain random split is this with
    every image its own group.
    """
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
    return Split(*(np.array(sorted(p), dtype=np.int64) for p in parts))


def random_split(labels: np.ndarray, seed: int = 0) -> Split:
    """The plain stratified random split (what the published 98.25% was measured on)."""
    return grouped_split(labels, [str(i) for i in range(len(labels))], seed=seed)
