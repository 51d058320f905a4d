"""A batch-scoring job across workers: plan it into shards, score each, merge once at the end.

The job's state lives in its `JobRecord` (Redis); the results live under the output prefix.
Each step is idempotent, so a redelivered task (after a worker died) redoes its work
without duplicating anything.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from piston.errors import PistonError, StorageError
from piston.jobs import TERMINAL, JobRecord, now
from workers.runtime import Runtime
from workers.scoring import (
    Item,
    counts,
    merge,
    part_key,
    plan,
    score_items,
    shards,
    to_jsonl,
)

log = logging.getLogger(__name__)
SendShard = Callable[[int, list[Item], str], None]


def start(rt: Runtime, record: JobRecord, src_uri: str, out_uri: str, only_new: bool,
          send_shard: SendShard, send_finalize: Callable[[], None]) -> None:
    """Plan the job and send one task per shard (or finish at once when nothing is new)."""
    if not record.set_state("STARTED"):
        return
    record.set(src=src_uri, out=out_uri, started_at=now(), started_ts=time.time())
    if only_new:  # scheduled runs: one at a time per output, or two would score the same images
        holder = record.claim(f"out:{out_uri}", rt.settings.score_time_limit_s * 4)
        if holder:
            nothing = {"total": 0, "skipped": 0, "scored": 0, "errors": 0, "needs_review": 0,
                       "by_label": {}, "images_per_second": 0.0}
            record.set(shards=0, summary=nothing)
            record.set_state("SUCCESS", reason=f"skipped: job {holder} is still scoring {src_uri}")
            return
    src, out = rt.storage(src_uri), rt.storage(out_uri)
    version = rt.production().meta.version
    todo, skipped = plan(src, out, version, only_new)
    if not todo and not skipped and not only_new:  # a schedule may find nothing yet
        raise PistonError(f"{src_uri} holds no images (jpeg, png, bmp, tiff, webp, gif)")
    parts = shards(todo, rt.settings.score_shard_size)
    record.set(model_version=version, total=len(todo), skipped=skipped, shards=len(parts))
    record.set_state("PROGRESS")
    log.info("job %s: %d images to score in %d shards (%d already scored) with %s",
             record.job_id, len(todo), len(parts), skipped, version)
    if not parts:
        send_finalize()
    for index, items in enumerate(parts):
        send_shard(index, items, version)


def run_shard(rt: Runtime, record: JobRecord, shard: int, items: list[Item], version: str,
              src_uri: str, out_uri: str) -> bool:
    """Score one shard and store its part; True when it was the last shard of the job."""
    if record.state in TERMINAL:
        return False
    rt.redis.hset(f"{record.key}:workers", str(shard), f"{socket.gethostname()}:{os.getpid()}")
    src, out = rt.storage(src_uri), rt.storage(out_uri)
    records = score_items(
        record.job_id, src, rt.predictor(version), [tuple(i) for i in items],  # type: ignore[misc]
        rt.settings.max_image_pixels,
        on_batch=lambda done: record.progress(shard, counts(done)),
        should_stop=lambda: record.state in TERMINAL,
        max_per_second=rt.settings.score_max_images_per_second,
    )
    if records is None:
        log.info("job %s shard %d stopped: the job has ended", record.job_id, shard)
        discard(rt, record)
        return False
    out.write(part_key(record.job_id, shard), to_jsonl(records))
    if record.state in TERMINAL:  # cancelled or failed while this shard finished
        discard(rt, record)
        return False
    return record.shard_done(shard, counts(records))


def finish(rt: Runtime, record: JobRecord) -> dict[str, Any]:
    """Merge every shard's part into the outputs and write the summary (under a lock per output)."""
    if record.state in TERMINAL:
        return record.status()
    out_uri = str(record.get("out"))
    out = rt.storage(out_uri)
    shard_count = int(record.get("shards", 0))
    with rt.redis.lock(f"piston:lock:{out_uri}", timeout=600, blocking_timeout=600):
        new = merge(out, record.job_id, shard_count)
        seconds = max(time.time() - float(record.get("started_ts", time.time())), 1e-9)
        tally = counts(new)
        summary = {
            "job_id": record.job_id, "state": "SUCCESS", "src": record.get("src"), "out": out_uri,
            "model_version": record.get("model_version"), "total": int(record.get("total", 0)),
            "skipped": int(record.get("skipped", 0)), "scored": tally["scored"],
            "errors": tally["errors"], "needs_review": tally["needs_review"],
            "by_label": tally["by_label"], "seconds": round(seconds, 3),
            "images_per_second": round(len(new) / seconds, 2), "finished_at": now(),
        }
        out.write(f"jobs/{record.job_id}.json", json.dumps(summary, indent=2).encode())
        for shard in range(shard_count):
            out.delete(part_key(record.job_id, shard))
        record.set(summary=summary)
        record.set_state("SUCCESS")
    log.info("job %s done: %s", record.job_id, summary)
    return summary



def discard(rt: Runtime, record: JobRecord) -> None:
    """Remove a failed or cancelled job's staged parts, if the store lets us (best effort)."""
    out_uri = record.get("out")
    if not out_uri:
        return
    try:
        out = rt.storage(str(out_uri))
        for obj in out.list(f"_parts/{record.job_id}/"):
            out.delete(obj.key)
    except StorageError as err:
        log.warning("job %s: staged parts left under %s/_parts: %s", record.job_id, out_uri, err)
