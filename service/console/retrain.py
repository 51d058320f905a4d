"""Retraining with reviewed labels: the original data set plus the reviewed images, as one set.

Training reads one location, and the reviewed images live under the scoring job's source
while the data set lives elsewhere, so both are copied into a folder-per-class set under the
job's output prefix (`_retrain/<stamp>/`; `_` folders are never scored). That folder is what
the retrain job trains on, and it stays as the record of what the new bundle saw.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

from piston.errors import DataError
from piston.storage import Storage

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
COPY_THREADS = 8  # S3 GETs and PUTs are latency-bound


def class_folders(dataset: Storage) -> dict[str, str]:
    """{key: class} for a folder-per-class data set (`<class>/<image>`)."""
    found = {}
    for obj in dataset.list(""):
        parts = PurePosixPath(obj.key).parts
        if len(parts) == 2 and PurePosixPath(parts[1]).suffix.lower() in IMAGE_SUFFIXES:
            found[obj.key] = parts[0]
    if not found:
        raise DataError(f"{dataset.uri} holds no folder-per-class images (<class>/<image>):"
                        " retraining with reviewed labels needs a data set in that layout")
    return found


def stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


def _flat(key: str) -> str:
    return key.replace("/", "__")


def build_training_set(dataset: Storage, src: Storage, reviewed: dict[str, str],
                       dest: Storage) -> dict[str, int]:
    """Copy the data set and each reviewed image (into its answered class) to `dest`.

    Returns how many images each class got.
    """
    if not reviewed:
        raise DataError("no image of this job has been reviewed yet: review some first")
    copies = [(dataset, key, f"{label}/{_flat(key)}") for key, label in
              class_folders(dataset).items()]
    copies += [(src, key, f"{label}/reviewed__{_flat(key)}") for key, label in reviewed.items()]

    def copy(job: tuple[Storage, str, str]) -> str:
        store, key, target = job
        dest.write(target, store.read(key))
        return target.split("/", 1)[0]

    counts: dict[str, int] = {}
    with ThreadPoolExecutor(COPY_THREADS) as pool:
        for label in pool.map(copy, copies):
            counts[label] = counts.get(label, 0) + 1
    return counts
