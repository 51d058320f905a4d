"""The data check run before every training (and by `piston data check`).

It counts, warns about imbalance and tiny classes, lists what could not be decoded, finds
exact and near duplicates (calibrated on the data, see `training/neighbours.py`) and label
conflicts: the same or a near-identical image filed under two class names. Near-duplicate
groups feed the leakage-aware split; conflicting images are left out of training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from training.decode import DecodedSet
from training.neighbours import Neighbours

IMBALANCE_RATIO = 3.0
MIN_CLASS_IMAGES = 50
LARGE_GROUP = 10  # images; groups over this size are reported (they make splits lumpy)


@dataclass(frozen=True)
class Conflict:
    """Two near-identical images under different class names."""

    keys: tuple[str, str]
    classes: tuple[str, str]
    distance: float


@dataclass
class DataReport:
    counts: dict[str, int]
    warnings: list[str]
    excluded: list[tuple[str, str]]
    exact_duplicates: list[list[str]]
    near_duplicate_groups: list[list[str]]
    conflicts: list[Conflict] = field(default_factory=list)
    near_duplicate_bar: float = 0.0
    notes: list[str] = field(default_factory=list)

    def group_stats(self) -> GroupStats:
        sizes = [len(g) for g in self.near_duplicate_groups]
        return GroupStats(len(sizes), max(sizes, default=0),
                          sum(s for s in sizes if s > LARGE_GROUP))

    def figures(self, decode_seconds: float | None = None) -> DataFigures:
        """The record reports, `--json` and the bundle's metrics carry."""
        groups = self.group_stats()
        return DataFigures(
            images=sum(self.counts.values()), counts=self.counts, warnings=self.warnings,
            excluded=[Excluded(key=k, reason=r) for k, r in self.excluded],
            exact_duplicates=self.exact_duplicates,
            near_duplicate_groups=groups.near_duplicate_groups,
            largest_near_duplicate_group=groups.largest_near_duplicate_group,
            images_in_groups_over_10=groups.images_in_groups_over_10,
            near_duplicate_bar=round(self.near_duplicate_bar, 6),
            label_conflicts=[LabelConflict(keys=list(c.keys), classes=list(c.classes),
                                           distance=round(c.distance, 6))
                             for c in self.conflicts],
            notes=self.notes, decode_seconds=decode_seconds)


class GroupStats(NamedTuple):
    near_duplicate_groups: int
    largest_near_duplicate_group: int
    images_in_groups_over_10: int


class Excluded(BaseModel):
    key: str
    reason: str


class LabelConflict(BaseModel):
    keys: list[str]
    classes: list[str]
    distance: float


class DataFigures(BaseModel):
    """What the data check found, as a record (defaults: bundles written before a field)."""

    model_config = ConfigDict(frozen=True)

    images: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    excluded: list[Excluded] = Field(default_factory=list)
    exact_duplicates: list[list[str]] = Field(default_factory=list)
    near_duplicate_groups: int = 0
    largest_near_duplicate_group: int = 0
    images_in_groups_over_10: int = 0
    near_duplicate_bar: float = 0.0
    label_conflicts: list[LabelConflict] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    decode_seconds: float | None = None


def conflicts_of(
    decoded: DecodedSet, classes: list[str], neighbours: Neighbours
) -> list[Conflict]:
    """The cross-class near-copies, by path."""
    return [
        Conflict((decoded.keys[i], decoded.keys[j]),
                 (classes[int(decoded.labels[i])], classes[int(decoded.labels[j])]), d)
        for i, j, d in neighbours.conflicts
    ]


def split_groups(decoded: DecodedSet, components: np.ndarray) -> list[str]:
    """One group name per image: near-duplicate components merged with the manifest's `group`."""
    components = components.copy()
    by_group: dict[str, int] = {}
    for i, group in enumerate(decoded.groups):  # images sharing a manifest group are linked too
        if group is not None:
            first = by_group.setdefault(group, i)
            components[components == components[i]] = components[first]
    return [f"g{c}" for c in components]


def check(
    decoded: DecodedSet, classes: list[str], groups: list[str], neighbours: Neighbours
) -> DataReport:
    """Counts, warnings, duplicate and conflict lists for a decoded data set."""
    counts = {c: 0 for c in classes}
    for label in decoded.labels:
        counts[classes[int(label)]] += 1
    warnings = _count_warnings(counts)
    by_digest: dict[str, list[str]] = {}
    for key, digest in zip(decoded.keys, decoded.digests, strict=True):
        by_digest.setdefault(digest, []).append(key)
    exact = [sorted(keys) for keys in by_digest.values() if len(keys) > 1]
    members: dict[str, list[str]] = {}
    for key, group in zip(decoded.keys, groups, strict=True):
        members.setdefault(group, []).append(key)
    near = [sorted(keys) for keys in members.values() if len(keys) > 1]
    conflicts = conflicts_of(decoded, classes, neighbours)
    if exact:
        warnings.append(f"{len(exact)} sets of byte-identical images")
    if conflicts:
        warnings.append(
            f"{len(conflicts)} label conflicts (the same or a near-identical image under two"
            " class names), left out of training: "
            + "; ".join(f"{a} ({ca}) vs {b} ({cb})"
                        for (a, b), (ca, cb) in ((c.keys, c.classes) for c in conflicts[:10]))
            + (" ..." if len(conflicts) > 10 else "")
        )
    if decoded.failures:
        warnings.append(f"{len(decoded.failures)} files could not be decoded and are left out")
    report = DataReport(counts, warnings, decoded.failures, exact, near, conflicts,
                        neighbours.bar, _odd_images(decoded))
    stats = report.group_stats()
    if stats.images_in_groups_over_10 > 0.2 * len(decoded.keys):
        warnings.append(
            f"{stats.images_in_groups_over_10} of {len(decoded.keys)} images sit in"
            f" near-duplicate groups over {LARGE_GROUP} (largest"
            f" {stats.largest_near_duplicate_group}): grouped splits will be lumpy"
        )
    return report


def _count_warnings(counts: dict[str, int]) -> list[str]:
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
    return warnings


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
