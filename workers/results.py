"""The results of batch scoring under an output prefix, and merging a job's records into them.

    results.jsonl / results.csv   one record per (image, model version), merged over runs
    labels/prelabels.csv          `image_path,target` for confident predictions (training format)
    labels/review.csv             what a person should look at: uncertain or unreadable images
    jobs/<job_id>.json            each job's summary
    _parts/<job_id>/<shard>.jsonl a shard's records until the job merges them (then deleted)

Every object is written whole in one PUT (or renamed into place on disk), so a job that fails
leaves the previous results as they were. `results.jsonl` is replaced only if nobody replaced
it since it was read (a conditional write), so two merges at once cannot lose records.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import TypeAdapter

from piston.cells import to_cell
from piston.errors import StorageError
from piston.records import ScoreRecord
from piston.storage import Storage

RESULTS, RESULTS_CSV = "results.jsonl", "results.csv"
PRELABELS, REVIEW = "labels/prelabels.csv", "labels/review.csv"
MERGE_ATTEMPTS = 50
_RECORDS = TypeAdapter(list[ScoreRecord])


def part_key(job_id: str, shard: int) -> str:
    return f"_parts/{job_id}/{shard:05d}.jsonl"


def to_jsonl(records: Iterable[ScoreRecord]) -> bytes:
    return "".join(r.model_dump_json() + "\n" for r in records).encode()


def parse_jsonl(data: bytes) -> list[ScoreRecord]:
    """Every line's record, validated as one JSON array: half the CPU of a call per line,
    and the merge parses every part of a job while the other processes wait."""
    lines = [line for line in data.splitlines() if line.strip()]
    return _RECORDS.validate_json(b"[" + b",".join(lines) + b"]") if lines else []


def read_results(out: Storage, name: str = RESULTS) -> list[ScoreRecord]:
    return _read_versioned(out, name)[0]


def _read_versioned(out: Storage, name: str) -> tuple[list[ScoreRecord], str | None]:
    """The records in `name` and the ETag they were read at (None: no such object)."""
    if out.head(name) is None:
        return [], None
    try:
        data, info = out.get(name)
    except StorageError:
        if out.head(name) is None:  # deleted between the two calls
            return [], None
        raise
    return parse_jsonl(data), info.etag


def read_parts(out: Storage, job_id: str, shard_count: int) -> list[ScoreRecord]:
    """A job's staged records, shard by shard (missing parts: already merged and deleted)."""
    return [r for shard in range(shard_count) for r in read_results(out, part_key(job_id, shard))]


def merge_results(out: Storage, records: list[ScoreRecord],
                  also: dict[str, bytes] | None = None) -> list[ScoreRecord]:
    """Merge `records` into the outputs under `out`; returns every row of `results.jsonl`.

    Idempotent: merging the same records again writes the same. A record replaces the one
    of the same image and model version. `also` (key: content) is written with the views,
    once `results.jsonl` holds the records (a job's summary: one wait on the store fewer).
    """
    for _ in range(MERGE_ATTEMPTS):
        current, etag = _read_versioned(out, RESULTS)
        merged = {(r.key, r.model_version): r for r in current}
        merged.update({(r.key, r.model_version): r for r in records})
        rows = sorted(merged.values(), key=lambda r: (r.key, r.scored_at))
        if out.replace(RESULTS, to_jsonl(rows), etag):
            break
    else:
        raise StorageError(f"{out.uri}/{RESULTS} kept changing while merging: try again")
    latest = {r.key: r for r in rows}.values()  # the newest record of each image
    views = {
        RESULTS_CSV: results_csv(rows),
        PRELABELS: _csv(["image_path", "target"], [
            [r.key, r.label] for r in latest if not r.error and not r.needs_review
        ]),
        REVIEW: _csv(["image_path", "predicted", "confidence", "reason"], [
            [r.key, r.label or "", "" if r.confidence is None else f"{r.confidence:.4f}",
             r.error or review_reason(r)]
            for r in latest if r.error or r.needs_review
        ]),
    }
    write_all(out, views | (also or {}))
    return rows


def write_all(out: Storage, objects: dict[str, bytes]) -> None:
    """Write independent objects at once: each write waits on the store (a PUT's round trip,
    a file's fsync, ~5 ms here), and the merge runs while the other processes are idle."""
    with ThreadPoolExecutor(len(objects) or 1) as pool:
        list(pool.map(lambda item: out.write(*item), objects.items()))


def review_reason(record: ScoreRecord) -> str:
    """Why a scored image is in the review queue, as the queue shows it."""
    return "novel" if record.novel else "low confidence"


def results_csv(rows: list[ScoreRecord]) -> bytes:
    classes = sorted({c for r in rows for c in (r.probabilities or {})})
    header = ["key", "etag", "size", "label", "confidence", "needs_review", "review_reason",
              "novelty", "novel", "model_version", "error", "metadata",
              *(f"p_{c}" for c in classes)]
    # only text can read as a formula: numbers and booleans skip `to_cell` (a merge writes a
    # row per record while the other processes wait)
    return _csv(header, [
        [to_cell(r.key), to_cell(r.etag), r.size, to_cell(r.label or ""),
         "" if r.confidence is None else r.confidence, r.needs_review,
         to_cell(r.review_reason or ""), "" if r.novelty is None else r.novelty, r.novel,
         to_cell(r.model_version), to_cell(r.error or ""),
         to_cell(json.dumps(r.metadata)) if r.metadata else "",
         *((r.probabilities or {}).get(c, "") for c in classes)]
        for r in rows
    ], cells=False)


def _csv(header: list[str], rows: Iterable[list[Any]], cells: bool = True) -> bytes:
    """CSV text; `cells=False`: the rows' text is already spreadsheet-safe (`to_cell`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(([to_cell(v) for v in row] for row in rows) if cells else rows)
    return buf.getvalue().encode()
