"""Shadow scoring in one API worker: the candidate scores a share of live images off the path.

After production has answered, `seen` picks a share of the images and puts them on a bounded
queue (full: dropped, counted). One low-priority thread scores them with the candidate, but only
while production's batcher is idle: an image that waits longer than `max_wait_s` for that is
dropped as busy, and counted. So a shadow never delays an answer; under full load it sees
fewer images, and says how many it missed. Counts go to Redis under the shadow's id
(`piston.shadow` reads them back); disagreeing images are kept as small thumbnails, bounded.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from piston import shadow
from piston.bundle import Predictor
from piston.errors import InputError, PistonError, StorageUnavailable
from piston.follow import _probe
from piston.imaging import Contract, preprocess
from piston.live import Tally, connect
from piston.registry import Registry
from piston.runtime import RuntimeName
from piston.scoring import Decision, NetOutput, decide
from service.decoding import lower_priority
from service.watch import Seen

log = logging.getLogger(__name__)
MAX_SHADOW_BATCH = 16
IDLE_POLL_S = 0.005
THUMBNAIL_SIDE = 96


@dataclass(frozen=True)
class ShadowLimits:
    """From the settings: queue per worker, wait for idle, samples kept, expiry, pixel cap."""

    queue: int
    max_wait_s: float
    samples: int
    ttl_s: int
    max_pixels: int


@dataclass(frozen=True)
class _Item:
    shadow_id: str
    seen: Seen
    contract: Contract  # production's: the candidate reuses the array when its own matches
    production_ms: float
    at: float


class ShadowScorer:
    """Follows the shadow spec in Redis; scores picked images with the candidate.

    The candidate loads in `runtime` with `threads` intra-op threads, as production does: a
    comparison across runtimes would time the runtimes, and an ONNX worker would import torch.
    """

    def __init__(self, registry: Registry | None, redis_url: str, limits: ShadowLimits,
                 busy: Callable[[], bool], infer: Callable[[Predictor, np.ndarray], NetOutput],
                 *, runtime: RuntimeName, threads: int | None,
                 thread_init: Callable[[], None] | None = None) -> None:
        self.registry = registry
        self.runtime = runtime
        self.threads = threads
        self.redis_url = redis_url
        self.limits = limits
        self.busy = busy
        self.infer = infer
        self.thread_init = thread_init
        self.tally = Tally()
        self.spec: shadow.ShadowSpec | None = None
        self.candidate: Predictor | None = None
        self.last_error: str | None = None
        # The shadow whose candidate did not load, and why (only the latest: bounded).
        self._refused: dict[str, str] = {}
        self._queue: queue.Queue[_Item] = queue.Queue(limits.queue)
        self._rng = random.Random()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one loader at a time (tick thread, admin request)

    # -- on the event loop: pick and enqueue, nothing else -----------------------------------

    def seen(self, predictor: Predictor, images: Sequence[Seen], seconds: float) -> None:
        spec, candidate = self.spec, self.candidate
        if spec is None or candidate is None or predictor.meta.version != spec.production:
            return
        per_image_ms = 1000 * seconds / max(len(images), 1)
        picked = full = 0
        now = time.monotonic()
        for item in images:
            if self._rng.random() >= spec.share:
                continue
            picked += 1
            try:
                self._queue.put_nowait(
                    _Item(spec.id, item, predictor.contract, per_image_ms, now))
            except queue.Full:
                full += 1
        if picked:
            counts = {"offered": picked} | ({"dropped:queue_full": full} if full else {})
            self.tally.add(shadow.counts_key(spec.id), counts, self.limits.ttl_s)

    def error(self, version: str | None, kind: str) -> None:
        """Refused requests never reach the candidate: nothing to compare."""

    # -- on the watch thread: follow the spec, flush ----------------------------------------

    def tick(self, serving: str | None) -> None:
        try:
            self.sync(serving)
        except PistonError as err:  # Redis away: keep the candidate, try at the next tick
            self._note(str(err))
        self.tally.flush(connect(self.redis_url))

    def sync(self, serving: str | None) -> None:
        """Load, keep or drop the candidate as the spec in Redis says; end a stale shadow."""
        with self._lock:
            spec = shadow.current(self.redis_url)
            if (spec is not None and serving is not None and serving != spec.production
                    and self._production() != spec.production):  # not just a slow swap here
                shadow.end(self.redis_url, f"production moved to {serving}", self.limits.ttl_s,
                           spec.id)
                spec = None
            if spec is None:
                self.spec, self.candidate = None, None
                return
            if self.spec is not None and self.spec.id == spec.id:
                return
            if spec.id in self._refused:
                return
            if self.candidate is None or self.candidate.meta.version != spec.version:
                self.candidate = None
                try:
                    self.candidate = self._load(spec.version)
                except StorageUnavailable as err:  # passing: try again next tick
                    self._note(f"cannot fetch candidate {spec.version} yet: {err}")
                    return
                except Exception as err:
                    self._refused = {spec.id: f"{type(err).__name__}: {err}"}
                    self._note(f"candidate {spec.version} refused: {self._refused[spec.id]}")
                    raise PistonError(self.last_error or "", "conflict") from None
            self.spec, self.last_error = spec, None
            self._start_thread()
            log.info("shadowing %s on %.0f%% of live images", spec.version, 100 * spec.share)

    def _note(self, error: str) -> None:
        """Log an error once (ticks repeat it every second); kept out of the public /model."""
        if error != self.last_error:
            log.warning("shadow: %s", error)
        self.last_error = error

    def _production(self) -> str | None:
        return self.registry.current() if self.registry is not None else None

    def _load(self, version: str) -> Predictor:
        if self.registry is None:
            raise PistonError("this service has no registry (a pinned bento) to fetch a"
                              " candidate from", "conflict")
        predictor = Predictor.load(self.registry.fetch(version), self.runtime, self.threads)
        _probe(predictor)
        return predictor

    # -- the scoring thread ------------------------------------------------------------------

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        if self.thread_init is not None:
            self.thread_init()
        lower_priority()  # the candidate yields the cores to production
        while not self._stop.is_set():
            try:
                items = [self._queue.get(timeout=0.5)]
            except queue.Empty:
                continue
            while len(items) < MAX_SHADOW_BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            spec, candidate = self.spec, self.candidate
            if spec is None or candidate is None:
                continue  # the shadow ended: its figures are closed
            items = self._when_idle([i for i in items if i.shadow_id == spec.id], spec.id)
            if items:
                try:
                    self._score(spec, candidate, items)
                except Exception as err:  # counted and logged; the thread goes on
                    self.tally.add(shadow.counts_key(spec.id), {"failed": len(items)},
                                   self.limits.ttl_s)
                    log.exception("shadow scoring failed: %s", err)

    def _when_idle(self, items: list[_Item], shadow_id: str) -> list[_Item]:
        """Wait while production is busy; what waited past `max_wait_s` is dropped as busy."""
        while items and self.busy():
            now = time.monotonic()
            late = sum(1 for i in items if now - i.at > self.limits.max_wait_s)
            if late:
                self.tally.add(shadow.counts_key(shadow_id), {"dropped:busy": late},
                               self.limits.ttl_s)
                items = [i for i in items if now - i.at <= self.limits.max_wait_s]
            time.sleep(IDLE_POLL_S)
        return items

    def _score(self, spec: shadow.ShadowSpec, candidate: Predictor, items: list[_Item]) -> None:
        key = shadow.counts_key(spec.id)
        arrays, kept, failed = [], [], 0
        for item in items:
            if item.contract == candidate.contract:
                arrays.append(item.seen.array)
            else:
                try:
                    arrays.append(preprocess(item.seen.data, candidate.contract,
                                             self.limits.max_pixels))
                except InputError:
                    failed += 1
                    continue
            kept.append(item)
        if failed:
            self.tally.add(key, {"failed": failed}, self.limits.ttl_s)
        if not kept:
            return
        began = time.perf_counter()
        decisions = decide(candidate, self.infer(candidate, np.stack(arrays)))
        ms = 1000 * (time.perf_counter() - began) / len(kept)
        counts: dict[str, float] = {"compared": len(kept), "agreed": 0, "review_p": 0,
                                    "review_c": 0}
        for item, theirs in zip(kept, decisions, strict=True):
            ours = item.seen.decision
            pair = "m:" + json.dumps([ours.label, theirs.label])
            counts[pair] = counts.get(pair, 0) + 1
            counts["agreed"] += int(ours.label == theirs.label)
            counts["review_p"] += int(ours.needs_review)
            counts["review_c"] += int(theirs.needs_review)
            counts["conf_p"] = counts.get("conf_p", 0.0) + ours.confidence
            counts["conf_c"] = counts.get("conf_c", 0.0) + theirs.confidence
            counts["ms_p"] = counts.get("ms_p", 0.0) + item.production_ms
            counts["ms_c"] = counts.get("ms_c", 0.0) + ms
            if ours.label != theirs.label and self.limits.samples:
                self.tally.push(shadow.samples_key(spec.id), sample(item.seen, ours, theirs),
                                self.limits.samples, self.limits.ttl_s)
        self.tally.add(key, counts, self.limits.ttl_s)

    # -- reporting ---------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        spec = self.spec
        return {"shadow": {"version": spec.version if spec else None,
                           "share": spec.share if spec else None,
                           "loaded": self.candidate is not None,
                           "queued": self._queue.qsize()}}

    def close(self) -> None:
        self._stop.set()


def sample(seen: Seen, ours: Decision, theirs: Decision) -> str:
    """A disagreement as stored: both answers and a small thumbnail (JSON)."""
    from PIL import Image

    width = height = 0
    thumbnail = ""
    try:
        with Image.open(io.BytesIO(seen.data)) as img:
            width, height = img.size
            img.draft("RGB", (THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2))
            small = img.convert("RGB")
            small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            buf = io.BytesIO()
            small.save(buf, format="JPEG", quality=70)
            thumbnail = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # decoded once already; a thumbnail is a nicety, the counts are not
        log.debug("no thumbnail for a shadow sample", exc_info=True)
    return json.dumps({
        "at": shadow.now(), "production": ours.label,
        "production_confidence": round(ours.confidence, 4), "candidate": theirs.label,
        "candidate_confidence": round(theirs.confidence, 4),
        "candidate_review": theirs.needs_review, "width": width, "height": height,
        "thumbnail": thumbnail})
