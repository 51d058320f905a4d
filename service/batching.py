"""Adaptive batching for concurrent requests, without a timer.

Requests queue while the model is busy; when it is free, everything queued (up to the
batch limit, same model only) goes in one forward pass. A lone request is scored at once,
so batching adds no latency at concurrency 1 and grows batches with the load. Unlike
BentoML's `CorkDispatcher` (1 ms polling, queued requests cancelled with 503 once over
`max_latency_ms`), nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from piston.bundle import Predictor

InferFn = Callable[[Predictor, np.ndarray], np.ndarray]


@dataclass
class _Item:
    predictor: Predictor
    array: np.ndarray
    future: asyncio.Future[np.ndarray] = field(repr=False)


class Batcher:
    """Runs `infer(predictor, batch)` on one thread; callers await their own rows."""

    def __init__(self, infer: InferFn, max_batch_size: int,
                 thread_init: Callable[[], None] | None = None) -> None:
        self.infer = infer
        self.max_batch_size = max_batch_size
        self._queue: asyncio.Queue[_Item] | None = None
        self._runner: asyncio.Task[None] | None = None
        # `thread_init` runs in the inference thread: OpenMP thread counts are per thread.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer",
                                        initializer=thread_init)
        self.batches = 0
        self.rows = 0

    async def score(self, predictor: Predictor, arrays: list[np.ndarray]) -> np.ndarray:
        """Probabilities for `arrays` (one request's images), batched with other requests."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._runner is None or self._runner.done():
            self._queue = asyncio.Queue()
            self._runner = loop.create_task(self._run())
        futures = []
        for array in arrays:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.put_nowait(_Item(predictor, array, future))
            futures.append(future)
        return np.stack(await asyncio.gather(*futures))

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        pending: _Item | None = None
        while True:
            first = pending or await self._queue.get()
            pending = None
            batch = [first]
            while len(batch) < self.max_batch_size and not self._queue.empty():
                item = self._queue.get_nowait()
                if item.predictor is not first.predictor:  # a swap: next batch, new model
                    pending = item
                    break
                batch.append(item)
            try:
                stacked = np.stack([item.array for item in batch])
                probs = await loop.run_in_executor(self._pool, self.infer, first.predictor, stacked)
            except Exception as err:  # reported to every caller of this batch
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            self.batches += 1
            self.rows += len(batch)
            for item, row in zip(batch, probs, strict=True):
                if not item.future.done():
                    item.future.set_result(row)

    def stats(self) -> dict[str, Any]:
        mean = self.rows / self.batches if self.batches else 0.0
        return {"batches": self.batches, "images": self.rows, "mean_batch_size": round(mean, 2)}

    def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
