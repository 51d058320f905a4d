"""Decoding that one client cannot use to freeze a worker.

The header gives the pixel count before any pixel is decoded: small images (the common
case, well under a millisecond) decode on the event loop, where a thread hop would cost
more than the work. An image is small by its bytes as well as its pixels: a few pixels in
many bytes (huge metadata chunks, a stream that is slow to decompress) is not cheap. Large
ones go to a few decode threads with a bounded queue, and past
that the request is refused with 503 and `Retry-After` instead of waiting without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from piston.errors import Overloaded
from piston.imaging import Contract, open_image, oriented_size, prepare

DECODE_NICENESS = 10


def lower_priority() -> None:
    """Run this thread at a lower CPU priority (Linux sets niceness per thread), so a large
    decode yields the core to the event loop and the inference thread whenever they need it."""
    thread = threading.get_native_id()
    # Not Linux, or not allowed: the same priority, and the pool is still bounded.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, thread,
                       os.getpriority(os.PRIO_PROCESS, thread) + DECODE_NICENESS)


class Decoded(NamedTuple):
    """A decoded image: the model input, and its (width, height) as oriented, from the header
    read while decoding (the drift watch and heatmaps need not open the image again)."""

    array: np.ndarray
    size: tuple[int, int]


class Decoder:
    """Turns image bytes into model input: inline when small, in a bounded pool when large."""

    def __init__(self, max_pixels: int, inline_pixels: int, threads: int, queue: int,
                 inline_bytes: int) -> None:
        self.max_pixels = max_pixels
        self.inline_pixels = inline_pixels
        self.inline_bytes = inline_bytes
        self.capacity = threads + queue
        self.pending = 0  # touched only on the event loop
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode",
                                        initializer=lower_priority)

    async def __call__(self, data: bytes, contract: Contract) -> np.ndarray:
        """The CHW float32 array: `ImageError` for a bad image, `Overloaded` when full."""
        return (await self.decoded(data, contract)).array

    async def decoded(self, data: bytes, contract: Contract) -> Decoded:
        """The array and the image's oriented size; refused as `__call__` is."""
        img = open_image(data, self.max_pixels)
        header = img.size  # before decoding: a JPEG draft shrinks img.size
        if img.width * img.height <= self.inline_pixels and len(data) <= self.inline_bytes:
            return Decoded(prepare(img, contract), oriented_size(img, contract, header))
        if self.pending >= self.capacity:
            raise Overloaded(f"{self.pending} large images are being decoded on this worker;"
                             " retry shortly")
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            array = await loop.run_in_executor(self._pool, prepare, img, contract)
            return Decoded(array, oriented_size(img, contract, header))
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
