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

import numpy as np

from piston.errors import Overloaded
from piston.imaging import Contract, open_image, prepare

DECODE_NICENESS = 10


def lower_priority() -> None:
    """Run this thread at a lower CPU priority (Linux sets niceness per thread), so a large
    decode yields the core to the event loop and the inference thread whenever they need it."""
    thread = threading.get_native_id()
    # Not Linux, or not allowed: the same priority, and the pool is still bounded.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, thread,
                       os.getpriority(os.PRIO_PROCESS, thread) + DECODE_NICENESS)


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
        img = open_image(data, self.max_pixels)
        if img.width * img.height <= self.inline_pixels and len(data) <= self.inline_bytes:
            return prepare(img, contract)
        if self.pending >= self.capacity:
            raise Overloaded(f"{self.pending} large images are being decoded on this worker;"
                             " retry shortly")
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, prepare, img, contract)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
