"""Batch scoring as plain functions: plan, score a shard, merge the results.

Output layout under the results prefix:

    results.jsonl / results.csv   one record per (image, model version), merged over runs
    labels/prelabels.csv          `image_path,target` for confident predictions (training format)
    labels/review.csv             what a person should look at: uncertain or unreadable images
    jobs/<job_id>.json            each job's summary
    _parts/<job_id>/<shard>.jsonl a shard's records until the job merges them (then deleted)

Every object is written whole in one PUT (or renamed into place on disk), so a job that fails
leaves the previous results as they were.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any

from piston.bundle import Predictor
from piston.errors import StorageError, StorageUnavailable
from piston.jobs import now
from piston.scoring import Decision, ImageFailure, score_blobs
from piston.storage import ObjectInfo, Storage
from training.dataset import IMAGE_SUFFIXES

RESULTS, RESULTS_CSV = "results.jsonl", "results.csv"
PRELABELS, REVIEW = "labels/prelabels.csv", "labels/review.csv"
BATCH = 16
READ_THREADS = 16  # S3 GETs are latency-bound: enough in flight to fill the link

Item = tuple[str, str, int]  # key, etag, size: what a shard message carries per image


def list_images(src: Storage) -> list[ObjectInfo]:
    """Image objects under `src`, by name (`_`-prefixed folders hold our own outputs)."""
    return [
        o for o in src.list("")
        if PurePosixPath(o.key).suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith("_") for part in PurePosixPath(o.key).parts)
    ]


def read_results(out: Storage, name: str = RESULTS) -> list[dict[str, Any]]:
    if out.head(name) is None:
        return []
    return [json.loads(line) for line in out.read(name).decode().splitlines() if line.strip()]


def plan(src: Storage, out: Storage, model_version: str, only_new: bool) -> tuple[list[Item], int]:
    """The images to score, and how many were skipped as already scored.

    Skipped: same key and ETag already scored by this model version (or by any version
    with `only_new`, which is what the schedule uses to score only new objects).
    """
    seen = {
        (r["key"], r.get("etag", ""))
        for r in read_results(out)
        if only_new or r.get("model_version") == model_version
    }
    images = list_images(src)
    todo = [(o.key, o.etag, o.size) for o in images if (o.key, o.etag) not in seen]
    return todo, len(images) - len(todo)


def shards(items: list[Item], size: int) -> list[list[Item]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _fetch(src: Storage, item: Item, max_bytes: int) -> tuple[dict[str, str], bytes | ImageFailure]:
    """Read one image: (user metadata, bytes or why not). One GET brings the metadata along."""
    try:
        data, info = src.get(item[0], max_bytes)
        return info.metadata, data
    except StorageUnavailable:
        raise  # the store is down: the whole shard is retried later
    except StorageError as err:
        return {}, ImageFailure(error=str(err), kind=err.kind)


def score_items(
    job_id: str,
    src: Storage,
    predictor: Predictor,
    items: Iterable[Item],
    max_pixels: int,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_per_second: float = 0.0,
    max_bytes: int = 20 * 1024 * 1024,
) -> list[dict[str, Any]] | None:
    """Score images; None when stopped early.

    Reads run ahead in a thread pool while the model scores the batch before, so a worker
    process keeps both the network and its cores busy.
    """
    items = list(items)
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(READ_THREADS) as pool:
        pending = [pool.submit(_fetch, src, it, max_bytes) for it in items]
        for begin in range(0, len(items), BATCH):
            if should_stop and should_stop():
                pool.shutdown(wait=True, cancel_futures=True)
                return None
            chunk = items[begin:begin + BATCH]
            fetched = [f.result() for f in pending[begin:begin + BATCH]]
            outcomes = score_blobs(predictor, [b for _, b in fetched], max_pixels)
            for item, (metadata, _), outcome in zip(chunk, fetched, outcomes, strict=True):
                decision = outcome.model_dump() if isinstance(outcome, Decision) else {
                    "label": None, "confidence": None, "probabilities": None,
                    "needs_review": True, "model_version": predictor.meta.version,
                    "error": f"{outcome.kind}: {outcome.error}"}
                records.append({"key": item[0], "etag": item[1], "size": item[2], "error": None,
                                **decision, "metadata": metadata, "scored_at": now(),
                                "job_id": job_id})
            if max_per_second:
                time.sleep(max(0.0, len(records) / max_per_second - (time.perf_counter() - start)))
            if on_batch:
                on_batch(records)
    return records


def counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    by_label: dict[str, int] = {}
    for r in records:
        if not r["error"]:
            by_label[r["label"]] = by_label.get(r["label"], 0) + 1
    errors = sum(1 for r in records if r["error"])
    return {"done": len(records), "scored": len(records) - errors, "errors": errors,
            "needs_review": sum(1 for r in records if r["needs_review"] and not r["error"]),
            "by_label": by_label}


def part_key(job_id: str, shard: int) -> str:
    return f"_parts/{job_id}/{shard:05d}.jsonl"


def to_jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


def merge(out: Storage, job_id: str, shard_count: int) -> list[dict[str, Any]]:
    """Write this job's records into the merged outputs; returns the job's own records.

    Idempotent: run again (after a crash, even once the parts are gone) it writes the same.
    """
    new: list[dict[str, Any]] = []
    for shard in range(shard_count):
        new.extend(read_results(out, part_key(job_id, shard)))
    merged = {(r["key"], r["model_version"]): r for r in read_results(out)}
    merged.update({(r["key"], r["model_version"]): r for r in new})  # a redelivery: same key
    rows = sorted(merged.values(), key=lambda r: (r["key"], r["scored_at"]))
    out.write(RESULTS, to_jsonl(rows))
    out.write(RESULTS_CSV, results_csv(rows))
    latest = {r["key"]: r for r in rows}  # the newest record of each image
    out.write(PRELABELS, _csv(["image_path", "target"], [
        [r["key"], r["label"]] for r in latest.values() if not r["error"] and not r["needs_review"]
    ]))
    out.write(REVIEW, _csv(["image_path", "predicted", "confidence", "reason"], [
        [r["key"], r["label"] or "", "" if r["confidence"] is None else f"{r['confidence']:.4f}",
         r["error"] or "low confidence"]
        for r in latest.values() if r["error"] or r["needs_review"]
    ]))
    return [r for r in rows if r.get("job_id") == job_id]


def results_csv(rows: list[dict[str, Any]]) -> bytes:
    classes = sorted({c for r in rows for c in (r["probabilities"] or {})})
    header = ["key", "etag", "size", "label", "confidence", "needs_review", "model_version",
              "error", "metadata", *(f"p_{c}" for c in classes)]
    return _csv(header, [
        [r["key"], r["etag"], r["size"], r["label"] or "", r["confidence"] or "",
         r["needs_review"], r["model_version"], r["error"] or "",
         json.dumps(r["metadata"]) if r["metadata"] else "",
         *((r["probabilities"] or {}).get(c, "") for c in classes)]
        for r in rows
    ])


def _csv(header: list[str], rows: Iterable[list[Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()
