"""The serving core, free of BentoML: follow the production bundle, decode, batch, decide.

The BentoML service class and the tests both hold one `Engine`; the HTTP routes only parse
requests and call it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from piston.bundle import Predictor
from piston.errors import InputError, NotReady, Overloaded
from piston.follow import ModelFollower
from piston.scoring import (
    Decision,
    ImageFailure,
    NetOutput,
    Outcome,
    Prepared,
    decide,
    explained,
)
from service.batching import Batcher, InferFn
from service.decoding import Decoder
from service.metrics import ServiceMetrics
from service.schemas import ModelAnswer
from service.watch import Seen, Watchers

log = logging.getLogger(__name__)
# Images up to this many pixels decode on the event loop (about 2 ms at most; a thread hop
# costs more than an 80x80 decode); larger ones go to the decode threads.
INLINE_DECODE_PIXELS = 512 * 512
# ...and up to this many bytes: 512x512 RGB uncompressed (BMP) is 768 KiB; more bytes for so
# few pixels is metadata or a costly stream, which goes to the decode threads too.
INLINE_DECODE_BYTES = 1024 * 1024
GC_THRESHOLDS = (20_000, 50, 100)  # Python's defaults: 700, 10, 10


@dataclass(frozen=True)
class Limits:
    """Per-worker limits, from the settings: pixels, images per request, decode threads."""

    max_image_pixels: int
    max_batch_images: int
    decode_threads: int = 1
    decode_queue: int = 4


def forward(predictor: Predictor, batch: np.ndarray, /, explain: bool = False) -> NetOutput:
    return predictor.forward(batch, explain=explain)


class Engine:
    """Holds the follower, the batcher and the metrics of one worker process."""

    def __init__(self, follower: ModelFollower, limits: Limits, metrics: ServiceMetrics,
                 poll_interval_s: float, infer: InferFn = forward,
                 thread_init: Callable[[], None] | None = None) -> None:
        self.follower = follower
        self.limits = limits
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        # One forward pass holds at most one full batch request.
        self.batcher = Batcher(infer, limits.max_batch_images, thread_init)
        self.decode = Decoder(limits.max_image_pixels, INLINE_DECODE_PIXELS,
                              limits.decode_threads, limits.decode_queue, INLINE_DECODE_BYTES)
        self.watchers = Watchers()  # shadow scoring, drift watch: told after each answer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- following the production pointer ---------------------------------------------------

    def refresh(self) -> bool:
        """Swap in the wanted bundle now if it changed; True on a swap."""
        swapped = self.follower.refresh()
        self.metrics.serving_version(self.follower.status.version)
        if swapped:
            # What is alive now (libraries, the model) lives as long as the worker: keep it out
            # of the cyclic collector, whose full passes over it stall the event loop. Each
            # request allocates a few hundred short-lived objects (BentoML's stack), so Python's
            # default thresholds would collect every few requests (docs/evaluation.md).
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
        return swapped

    def start_following(self) -> None:
        """Poll the pointer on a daemon thread (every worker process runs its own)."""
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.refresh()
                except Exception:  # never let the poller die; the old model keeps serving
                    log.exception("model refresh failed")
                if self.follower.pinned and self.follower.current is not None:
                    return  # a pinned bento loads once
                self._stop.wait(self.poll_interval_s)

        self._thread = threading.Thread(target=loop, name="model-follower", daemon=True)
        self._thread.start()

    def start_watching(self, interval_s: float) -> None:
        """Tick the watchers (Redis reads, flushes, candidate loads) on their own thread."""
        self.watchers.start(interval_s, lambda: self.follower.status.version)

    def stop(self) -> None:
        self._stop.set()
        self.watchers.close()
        self.batcher.close()
        self.decode.close()

    @property
    def ready(self) -> bool:
        return self.follower.current is not None

    def predictor(self) -> Predictor:
        predictor = self.follower.current
        if predictor is None:  # why (paths, endpoints) is for the admin: GET /model with it
            raise NotReady("not ready: no bundle is loaded yet (is one in production? `piston"
                           " models current`; GET /model with the admin token says why)")
        return predictor

    # -- scoring ----------------------------------------------------------------------------

    async def classify(self, data: bytes, explain: bool = False, counted: bool = True
                       ) -> Decision:
        """One image -> its decision (with its heatmap when `explain`); `InputError` for a bad
        image, `Overloaded` when busy. `counted`: in the prediction metrics (the console's
        second look at a flagged image is not)."""
        predictor = self.predictor()  # the model this request finishes on, even across a swap
        began = time.perf_counter()
        array, size = await self.decode.decoded(data, predictor.contract)
        out = await self.batcher.score(predictor, [array], explain)
        decisions = decide(predictor, out)
        if counted:
            self.metrics.record(decisions)
            self.watchers.seen(predictor, [Seen(data, array, decisions[0], size[0] * size[1])],
                               time.perf_counter() - began)
        if explain:
            decisions = explained(predictor, out, decisions, [size])
        return decisions[0]

    def error(self, kind: str) -> None:
        """A refused request or image: counted in Prometheus and by the watchers."""
        self.metrics.error(kind)
        self.watchers.error(self.follower.status.version, kind)

    async def classify_many(self, images: list[bytes], explain: bool = False) -> list[Outcome]:
        """Many images -> a `Decision` or an `ImageFailure` each, in order (with heatmaps
        when `explain`)."""
        predictor = self.predictor()
        began = time.perf_counter()
        prepared: list[Prepared] = []
        sizes: list[tuple[int, int]] = []  # of the decoded images, in order
        for data in images:  # one at a time: a batch never holds more than one decode thread
            try:
                decoded = await self.decode.decoded(data, predictor.contract)
            except (InputError, Overloaded) as err:
                self.error(err.kind)
                prepared.append(ImageFailure(error=str(err), kind=err.kind))
                continue
            prepared.append(decoded.array)
            sizes.append(decoded.size)
        arrays = [p for p in prepared if not isinstance(p, ImageFailure)]
        blobs = [d for d, p in zip(images, prepared, strict=True)
                 if not isinstance(p, ImageFailure)]
        decisions: list[Decision] = []
        if arrays:
            out = await self.batcher.score(predictor, arrays, explain)
            decisions = decide(predictor, out)
            if explain:  # a few ms an image: off the event loop
                decisions = await asyncio.to_thread(explained, predictor, out, decisions, sizes)
        self.metrics.record(decisions)
        if decisions:
            self.watchers.seen(predictor, [Seen(*row) for row in zip(blobs, arrays, decisions,
                                                                      [w * h for w, h in sizes],
                                                                      strict=True)],
                               time.perf_counter() - began)
        rows = iter(decisions)
        return [p if isinstance(p, ImageFailure) else next(rows) for p in prepared]

    # -- reporting --------------------------------------------------------------------------

    def model_info(self) -> ModelAnswer:
        status = self.follower.status
        predictor = self.follower.current
        meta = predictor.meta if predictor is not None else None
        return ModelAnswer(
            ready=self.ready,
            follows_registry=not self.follower.pinned,
            pinned=self.follower.pinned,
            poll_interval_s=self.poll_interval_s,
            refused=dict(status.refused),
            last_error=status.last_error,
            batching=self.batcher.stats(),
            version=meta.version if meta else None,
            classes=meta.classes if meta else None,
            threshold=meta.threshold if meta else None,
            class_thresholds=dict(meta.calibration.class_thresholds) if meta else None,
            arch=meta.arch if meta else None,
            runtime=predictor.runtime.name if predictor is not None else None,
            created_at=meta.created_at if meta else None,
            metrics={**meta.metrics.headline(),
                     "per_class": {c: f.model_dump() for c, f in meta.metrics.per_class.items()}}
            if meta else None,
            gates=list(meta.gates) if meta else None,
            gates_passed=meta.gates_passed if meta else None,
            parent=meta.parent if meta else None,
            **self.watchers.info(),
        )
