"""Adaptive batching for concurrent requests, without a timer.

Requests queue while the model is busy; when it is free, everything queued (up to the
batch limit, same model only) goes in one forward pass. A lone request is scored at once,
so batching adds no latency at concurrency 1 and grows batches with the load. A request
that finds nothing queued or running, and still none after letting every request that is
ready to run go first, is alone: if its model's one-image forward pass measured short, it
runs right on the event loop (at concurrency 1 the two thread hand-offs cost more than a
small model's forward pass). Unlike
BentoML's `CorkDispatcher` (1 ms polling, queued requests cancelled with 503 once over
`max_latency_ms`), nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from piston.bundle import Predictor
from piston.scoring import NetOutput


class InferFn(Protocol):
    """One forward pass: `explain` asks for the feature maps too (`NetOutput.maps`)."""

    def __call__(self, predictor: Predictor, batch: np.ndarray, /, explain: bool = False
                 ) -> NetOutput: ...


INLINE_FORWARD_S = 0.004  # a forward pass this short may block the event loop


@dataclass
class _Item:
    predictor: Predictor
    array: np.ndarray
    future: asyncio.Future[NetOutput] = field(repr=False)
    explain: bool = False


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
        self.inline = 0  # requests scored on the event loop
        self._busy = False  # a batch is in the inference thread
        self._arrivals = 0  # score() calls so far
        self._lone_seconds: dict[int, float] = {}  # id(predictor) -> last 1-image forward time

    async def score(self, predictor: Predictor, arrays: list[np.ndarray],
                    explain: bool = False) -> NetOutput:
        """The network's outputs for `arrays` (one request's images), batched with others;
        with `explain` they carry the feature maps (a batch that holds one such request is
        run with maps for all; the others' rows drop them)."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._runner is None or self._runner.done():
            self._queue = asyncio.Queue()
            self._runner = loop.create_task(self._run())
        self._arrivals += 1
        if len(arrays) == 1 and self._may_inline(predictor, explain):
            arrivals = self._arrivals
            await asyncio.sleep(0)  # requests ready to run go first: are we alone?
            if arrivals == self._arrivals and self._may_inline(predictor, explain):
                self.inline += 1
                self.batches += 1
                self.rows += 1
                return self._timed(predictor, np.stack(arrays), explain)
        futures = []
        for array in arrays:
            future: asyncio.Future[NetOutput] = loop.create_future()
            self._queue.put_nowait(_Item(predictor, array, future, explain))
            futures.append(future)
        if len(futures) == 1:  # `/classify`: its row as it is (gather + concat cost ~15 us)
            return await futures[0]
        return NetOutput.concat(await asyncio.gather(*futures))

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
                explain = any(item.explain for item in batch)
                self._busy = True
                out = await loop.run_in_executor(self._pool, self._timed, first.predictor,
                                                 stacked, explain)
            except Exception as err:  # reported to every caller of this batch
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            finally:
                self._busy = False
            self.batches += 1
            self.rows += len(batch)
            for i, item in enumerate(batch):
                if not item.future.done():
                    row = out.row(i)
                    item.future.set_result(row if item.explain else replace(row, maps=None))

    @property
    def busy(self) -> bool:
        """A batch is in the inference thread or requests are queued (read from any thread)."""
        return self._busy or (self._queue is not None and not self._queue.empty())

    def _may_inline(self, predictor: Predictor, explain: bool = False) -> bool:
        """Nothing queued or running, and this model's lone forward pass measured short. An
        explained one too when its maps come out of the same pass (a CAM in the runtime's
        graph), not from a second one (Grad-CAM's backward, torch weights behind an ONNX
        graph without maps)."""
        assert self._queue is not None
        idle = not self._busy and self._queue.empty()
        fast = self._lone_seconds.get(id(predictor), 1.0) <= INLINE_FORWARD_S
        return idle and fast and (not explain or predictor.runtime.explain_method == "cam")

    def _timed(self, predictor: Predictor, batch: np.ndarray, explain: bool = False
               ) -> NetOutput:
        """`infer`, timing plain one-image batches: the first lone request of a model measures
        it in the inference thread, the ones after it may then run inline."""
        if explain:
            return self.infer(predictor, batch, explain=True)
        began = time.perf_counter()
        out = self.infer(predictor, batch)
        if len(batch) == 1:
            if len(self._lone_seconds) > 4:
                self._lone_seconds.clear()  # old models: ids may be reused
            self._lone_seconds[id(predictor)] = time.perf_counter() - began
        return out

    def stats(self) -> dict[str, Any]:
        mean = self.rows / self.batches if self.batches else 0.0
        return {"batches": self.batches, "images": self.rows, "mean_batch_size": round(mean, 2),
                "inline": self.inline}

    def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
