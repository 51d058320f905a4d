"""Load, decode, check and group a data set: what every training, fold and search starts from."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from piston.errors import DataError
from training.check import DataReport, check, split_groups
from training.config import TrainConfig
from training.dataset import Dataset, load_dataset
from training.decode import DecodedSet, decode_dataset
from training.neighbours import find_near_duplicates
from training.sizing import input_size_for

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A data set decoded once (cached in memory), checked and grouped."""

    dataset: Dataset
    decoded: DecodedSet
    groups: list[str]
    report: DataReport
    decode_seconds: float

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    def resolve(self, config: TrainConfig) -> TrainConfig:
        """The config with the input size the images were decoded at."""
        return config.model_copy(update={"input_size": self.decoded.size})


def prepare(
    location: str,
    config: TrainConfig,
    max_pixels: int,
    *,
    class_map: dict[str, str] | None = None,
    s3_endpoint_url: str | None = None,
    strict: bool = False,
) -> Prepared:
    """Load and decode (at the config's size, or the images' own up to its cap), then check.

    Label conflicts are left out (listed in the report), or refused with `strict`.
    """
    start = time.perf_counter()
    dataset = load_dataset(location, class_map, s3_endpoint_url)
    decoded = decode_dataset(
        dataset,
        config.input_size or (lambda sizes: input_size_for(sizes, config.max_input_side)),
        max_pixels,
    )
    for key, reason in decoded.failures:
        log.warning("left out %s: %s", key, reason)
    neighbours = find_near_duplicates(decoded.images, decoded.labels)
    groups = split_groups(decoded, neighbours.components)
    report = check(decoded, dataset.classes, groups, neighbours)
    report.warnings[:0] = dataset.problems
    for warning in report.warnings:
        log.warning("data check: %s", warning)
    if report.conflicts:
        if strict:
            first = report.conflicts[0]
            raise DataError(
                f"{len(report.conflicts)} label conflicts, e.g. {first.keys[0]}"
                f" ({first.classes[0]}) and {first.keys[1]} ({first.classes[1]}): fix the"
                " labels, or drop --strict"
                " to leave them out (`piston data check` lists them all)")
        keep = _without_conflicts(decoded.keys, report)
        decoded, groups = decoded.subset(keep), [groups[i] for i in keep]
    if len({int(label) for label in decoded.labels}) < 2:
        raise DataError("fewer than 2 classes have images that decode: nothing to train on")
    return Prepared(dataset, decoded, groups, report, time.perf_counter() - start)


def _without_conflicts(keys: list[str], report: DataReport) -> np.ndarray:
    out = {k for c in report.conflicts for k in c.keys}
    return np.array([i for i, key in enumerate(keys) if key not in out], dtype=np.int64)
