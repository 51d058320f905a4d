"""Splits: stratified 70/15/15, seeded, and groups never straddle two splits."""

from __future__ import annotations

import numpy as np

from training.split import grouped_split, random_split


def _labels_and_groups(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for label, n_groups in enumerate((12, 15, 20)):
        for g in range(n_groups):
            size = int(rng.integers(1, 8))
            labels += [label] * size
            groups += [f"{label}-{g}"] * size
    return np.array(labels), groups


def test_groups_never_straddle_and_every_image_is_used_once() -> None:
    labels, groups = _labels_and_groups()
    split = grouped_split(labels, groups, seed=3)
    parts = [split.train, split.val, split.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    seen = [{groups[i] for i in p} for p in parts]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_every_class_is_in_every_split_near_its_share() -> None:
    labels, groups = _labels_and_groups(1)
    split = grouped_split(labels, groups, seed=0)
    for label in range(3):
        total = int((labels == label).sum())
        test_share = int((labels[split.test] == label).sum()) / total
        val_share = int((labels[split.val] == label).sum()) / total
        assert 0.05 < test_share < 0.30 and 0.05 < val_share < 0.30


def test_seeded_and_repeatable() -> None:
    labels, groups = _labels_and_groups(2)
    a, b = grouped_split(labels, groups, seed=5), grouped_split(labels, groups, seed=5)
    assert np.array_equal(a.test, b.test)
    others = [grouped_split(labels, groups, seed=s).test for s in range(6, 10)]
    assert any(not np.array_equal(a.test, o) for o in others)


def test_random_split_is_stratified_70_15_15() -> None:
    labels = np.repeat([0, 1, 2], [88, 98, 99])
    split = random_split(labels, seed=0)
    assert abs(len(split.train) - 0.70 * len(labels)) <= 3
    assert abs(len(split.test) - 0.15 * len(labels)) <= 3
    assert set(np.unique(labels[split.test]).tolist()) == {0, 1, 2}
