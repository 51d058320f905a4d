"""Decode a whole data set once, in parallel, into an in-memory uint8 cache.

Reading happens first (bytes and image headers), so the input size can follow the images
(`choose_size`) before anything is resized; then every image is decoded once at that size.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from piston.errors import ImageError, StorageError
from piston.imaging import Contract, ImageInfo, decode_image, to_uint8
from training.dataset import Dataset

SizeChooser = Callable[[list[tuple[int, int]]], tuple[int, int]]  # (width, height)s -> (h, w)


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

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the cached images."""
        return int(self.images.shape[2]), int(self.images.shape[3])


def _header_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError):  # decoding says why, later
        return None


def decode_dataset(
    dataset: Dataset,
    size: tuple[int, int] | SizeChooser,
    max_pixels: int,
    workers: int | None = None,
) -> DecodedSet:
    """Read and decode every sample at `size` (h, w), or at the size `size` picks from the
    images' own sizes; the ones that fail are listed with a reason, not fatal."""
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        blobs = list(pool.map(_read(dataset), (s.key for s in dataset.samples)))
        if callable(size):
            sizes = [_header_size(b) for b in blobs if isinstance(b, bytes)]
            size = size([s for s in sizes if s is not None])
        contract = Contract(*size)

        def load(blob: bytes | StorageError) -> tuple[np.ndarray, ImageInfo, str]:
            if isinstance(blob, StorageError):
                raise blob
            img, info = decode_image(blob, max_pixels, contract)
            return to_uint8(img, contract), info, hashlib.sha256(blob).hexdigest()

        futures = [pool.submit(load, blob) for blob in blobs]
        return _collect(dataset, futures, contract)


def _read(dataset: Dataset) -> Callable[[str], bytes | StorageError]:
    def read(key: str) -> bytes | StorageError:
        try:
            return dataset.storage.read(key)
        except StorageError as err:
            return err
    return read


def _collect(dataset: Dataset, futures: list, contract: Contract) -> DecodedSet:
    class_index = {c: i for i, c in enumerate(dataset.classes)}
    keys, labels, groups, images, digests, infos, failures = [], [], [], [], [], [], []
    for sample, future in zip(dataset.samples, futures, strict=True):
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
