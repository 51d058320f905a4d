"""Batch scoring as plain functions of plain arguments: plan a job, score a shard.

The Celery tasks (`workers.tasks`) call these and own everything else (state, progress,
retries, fan-out); the tests and the benchmark call them directly, in-process.
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from piston.bundle import Predictor
from piston.errors import StorageError, StorageUnavailable
from piston.explain import overlay
from piston.imaging import load_image, open_image
from piston.jobs import now
from piston.records import ScoreRecord
from piston.scoring import Decision, ImageFailure, Outcome, score_blobs
from piston.storage import ObjectInfo, Storage
from training.dataset import IMAGE_SUFFIXES
from workers.results import read_results

BATCH = 16  # images per forward pass: small enough for frequent progress and stop checks
HEATMAPS = "heatmaps"  # under a job's output: <key>.png for each flagged image, when asked
READ_AHEAD = 2  # batches read while the one before is scored: bounds the bytes held
# The last shards of a job shrink: each is at most 1/TAPER of what is left to plan, and never
# under MIN_SHARD images, so the processes run out of work together (see `shard_sizes`).
TAPER = 4
MIN_SHARD = 2 * BATCH

Item = tuple[str, str, int]  # key, etag, size: what a shard message carries per image
Fetched = tuple[dict[str, str], bytes | ImageFailure]  # user metadata, content or why not


@dataclass(frozen=True)
class Plan:
    """What a job will score: its shards (of items), and how many images it skipped."""

    shards: list[list[Item]]
    skipped: int

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.shards)


def list_images(src: Storage) -> list[ObjectInfo]:
    """Image objects under `src`, by name (`_`-prefixed folders hold our own outputs)."""
    return [o for o in src.list("") if is_image_key(o.key)]


def is_image_key(key: str) -> bool:
    """An image's key, outside our own `_` folders: `PurePosixPath`'s suffix and parts, by
    string operations (a plan checks every key while the other processes wait for shards,
    and two paths per key cost as much as the listing itself: docs/benchmarks.md)."""
    parts = [p for p in key.split("/") if p and p != "."]
    if not parts or any(p.startswith("_") for p in parts):
        return False
    name = parts[-1]
    dot = name.rfind(".")
    return 0 < dot < len(name) - 1 and name[dot:].lower() in IMAGE_SUFFIXES


def plan_job(src: Storage, out: Storage, model_version: str, only_new: bool,
             shard_size: int) -> Plan:
    """The images to score, in shards of `shard_size`, and how many were already scored.

    Skipped: same key and ETag already scored by this model version (or by any version
    with `only_new`, which is what the schedule uses to score only new objects).
    """
    seen = {(r.key, r.etag) for r in read_results(out)
            if only_new or r.model_version == model_version}
    images = list_images(src)
    todo = [(o.key, o.etag, o.size) for o in images if (o.key, o.etag) not in seen]
    shards, begin = [], 0
    for size in shard_sizes(len(todo), shard_size):
        shards.append(todo[begin:begin + size])
        begin += size
    return Plan(shards, len(images) - len(todo))


def shard_sizes(total: int, shard_size: int) -> list[int]:
    """Shards of `shard_size` images, then smaller ones towards the end of the job.

    Each shard costs a fixed ~10 ms (a Celery hand-off, Redis bookkeeping, its part written
    and synced: docs/benchmarks.md), so shards should be large; but a job ends when its last
    shard does, and with equal shards one process scores the last while the others wait.
    Tapering (a shard takes at most a TAPER-th of what is left, down to MIN_SHARD) keeps the
    bulk in large shards and leaves only small ones to finish on.
    """
    sizes = []
    left = total
    while left:
        size = min(left, shard_size, max(MIN_SHARD, left // TAPER))
        sizes.append(size)
        left -= size
    return sizes


def _fetch(src: Storage, item: Item, max_bytes: int) -> Fetched:
    """Read one image: (user metadata, bytes or why not). One GET brings the metadata along."""
    if item[2] > max_bytes:  # the listing says so: not even read
        return {}, ImageFailure(error=f"{item[2]} bytes, over the {max_bytes} limit",
                                kind="too_large")
    try:
        data, info = src.get(item[0], max_bytes)
        return info.metadata, data
    except StorageUnavailable:
        raise  # the store is down: the whole shard is retried later
    except StorageError as err:
        return {}, ImageFailure(error=str(err), kind=err.kind)


def _fetch_all(src: Storage, items: Sequence[Item], max_bytes: int) -> list[Fetched]:
    return [_fetch(src, item, max_bytes) for item in items]


def _batches(src: Storage, items: Sequence[Item], max_bytes: int, pool: ThreadPoolExecutor,
             ) -> Iterator[list[tuple[Item, dict[str, str], bytes | ImageFailure]]]:
    """Batches of fetched images; over the network, read up to READ_AHEAD batches ahead in
    `pool`, each image in its own thread (GETs wait on latency).

    From a local disk each batch is read here, when it is wanted: a read ahead on another
    thread cost ~80 us of CPU per image in hand-offs (the GIL, wake-ups) against ~30 us for
    the read itself, 8% of what the job spent scoring (docs/benchmarks.md).
    """
    chunks = deque(items[i:i + BATCH] for i in range(0, len(items), BATCH))
    if src.local_path("") is not None:
        for chunk in chunks:
            yield [(item, *f) for item, f in zip(chunk, _fetch_all(src, chunk, max_bytes),
                                                 strict=True)]
        return
    pending: deque[tuple[Sequence[Item], list[Future[list[Fetched]]]]] = deque()
    while chunks or pending:
        while chunks and len(pending) < READ_AHEAD:
            chunk = chunks.popleft()
            pending.append((chunk, [pool.submit(_fetch_all, src, [item], max_bytes)
                                    for item in chunk]))
        chunk, futures = pending.popleft()
        fetched = [one for f in futures for one in f.result()]
        yield [(item, *f) for item, f in zip(chunk, fetched, strict=True)]


def score_shard(src: Storage, predictor: Predictor, items: Sequence[Item], *, job_id: str,
                max_pixels: int, max_bytes: int, decode_threads: int = 2,
                on_batch: Callable[[list[ScoreRecord]], None] | None = None,
                should_stop: Callable[[], bool] | None = None,
                max_per_second: float = 0.0, report_every_s: float = 0.0,
                heatmaps: Storage | None = None) -> list[ScoreRecord] | None:
    """Score a shard's images into one record each, in order; None when stopped early.

    Reads run ahead in threads while the model scores the batch before; at most
    `decode_threads` images are decoded at once (a decoded image can be large). With
    `heatmaps` (the job's output), each image flagged for review gets its heatmap there.
    `should_stop` is asked before the first batch, `on_batch` told after a batch, each at
    most every `report_every_s` (each is a Redis round trip for a task).
    """
    records: list[ScoreRecord] = []
    start = time.perf_counter()
    asked = told = -float("inf")
    version = predictor.meta.version
    with ThreadPoolExecutor(BATCH) as reads, ThreadPoolExecutor(decode_threads) as decodes:
        for batch in _batches(src, items, max_bytes, reads):
            if should_stop and time.perf_counter() - asked >= report_every_s:
                asked = time.perf_counter()
                if should_stop():
                    return None
            outcomes = score_blobs(predictor, [b for _, _, b in batch], max_pixels, decodes.map)
            written = (write_heatmaps(heatmaps, predictor, batch, outcomes, max_pixels)
                       if heatmaps is not None else {})
            stamp = now()  # one per batch: scored together
            records.extend(
                ScoreRecord.of(o, key=item[0], etag=item[1], size=item[2], model_version=version,
                               metadata=meta, scored_at=stamp, job_id=job_id,
                               heatmap=written.get(item[0]))
                for (item, meta, _), o in zip(batch, outcomes, strict=True))
            if max_per_second:
                time.sleep(max(0.0, len(records) / max_per_second - (time.perf_counter() - start)))
            if on_batch and time.perf_counter() - told >= report_every_s:
                told = time.perf_counter()
                on_batch(records)
    return records


def heatmap_key(key: str) -> str:
    return f"{HEATMAPS}/{key}.png"


def write_heatmaps(out: Storage, predictor: Predictor,
                   batch: Sequence[tuple[Item, dict[str, str], bytes | ImageFailure]],
                   outcomes: Sequence[Outcome], max_pixels: int) -> dict[str, str]:
    """The flagged images of a batch, explained (a second forward pass over them alone) and
    written as overlays under `heatmaps/`; their keys, by image key."""
    flagged = [(item[0], blob) for (item, _, blob), o in zip(batch, outcomes, strict=True)
               if isinstance(o, Decision) and o.needs_review and isinstance(blob, bytes)]
    if not flagged:
        return {}
    explained = score_blobs(predictor, [blob for _, blob in flagged], max_pixels, explain=True)
    written = {}
    for (key, blob), outcome in zip(flagged, explained, strict=True):
        if not isinstance(outcome, Decision) or outcome.explanation is None:
            continue
        image = load_image(open_image(blob, max_pixels), predictor.contract)
        buf = io.BytesIO()
        overlay(image, outcome.explanation).save(buf, format="PNG")
        out.write(heatmap_key(key), buf.getvalue())
        written[key] = heatmap_key(key)
    return written
