"""Decode a whole data set once, in parallel, into an in-memory uint8 cache."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from piston.errors import ImageError, StorageError
from piston.imaging import Contract, ImageInfo, decode_image, to_uint8
from training.dataset import Dataset


@dataclass
class DecodedSet:
    """The images that decoded, as (N, 3, H, W) uint8, with what we learned reading them."""

    keys: list[str]
    labels: np.ndarray
    groups: list[str | None]
    images: np.ndarray
    digests: list[str]
    infos: list[ImageInfo]
    failures: list[tuple[str, str]]

    def subset(self, index: np.ndarray) -> DecodedSet:
        idx = [int(i) for i in index]
        return DecodedSet(
            [self.keys[i] for i in idx],
            self.labels[idx],
            [self.groups[i] for i in idx],
            self.images[idx],
            [self.digests[i] for i in idx],
            [self.infos[i] for i in idx],
            [],
        )


def decode_dataset(
    dataset: Dataset, contract: Contract, max_pixels: int, workers: int | None = None
) -> DecodedSet:
    """Read and decode every sample; the ones that fail are listed with a reason, not fatal."""

    def load(key: str) -> tuple[np.ndarray, ImageInfo, str]:
        data = dataset.storage.read(key)
        img, info = decode_image(data, max_pixels, contract)
        return to_uint8(img, contract), info, hashlib.sha256(data).hexdigest()

    class_index = {c: i for i, c in enumerate(dataset.classes)}
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    keys, labels, groups, images, digests, infos, failures = [], [], [], [], [], [], []
    with ThreadPoolExecutor(workers) as pool:
        futures = [(s, pool.submit(load, s.key)) for s in dataset.samples]
        for sample, future in futures:
            try:
                pixels, info, digest = future.result()
            except (ImageError, StorageError) as err:
                failures.append((sample.key, str(err)))
                continue
            keys.append(sample.key)
            labels.append(class_index[sample.label])
            groups.append(sample.group)
            images.append(pixels)
            digests.append(digest)
            infos.append(info)
    stacked = (
        np.stack(images)
        if images
        else np.zeros((0, 3, contract.height, contract.width), dtype=np.uint8)
    )
    return DecodedSet(
        keys, np.asarray(labels, dtype=np.int64), groups, stacked, digests, infos, failures
    )
