"""The review queue of one scoring job: what it flagged, the answers given, thumbnails.

A scoring job writes `labels/review.csv` (`image_path,predicted,confidence,reason`, paths
relative to its source) under its output prefix. Every answer is appended to
`labels/reviewed.csv` as `image_path,target`, the training CSV format; the last answer for
an image is the one that counts.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from PIL import Image

from piston.cells import from_cell, to_cell
from piston.errors import StorageError
from piston.imaging import decode_image
from piston.storage import Storage

REVIEW, REVIEWED = "labels/review.csv", "labels/reviewed.csv"
REVIEWED_HEADER = ("image_path", "target")
THUMBNAIL_SIDE = 320
def read_rows(storage: Storage, key: str) -> list[dict[str, str]]:
    """A CSV's rows as dicts; none when the file does not exist yet."""
    try:
        text = storage.read(key).decode("utf-8-sig")
    except StorageError:
        if storage.head(key) is None:
            return []
        raise
    return list(csv.DictReader(io.StringIO(text)))


def answers(out: Storage) -> dict[str, str]:
    """The last target given to each image."""
    return {from_cell(r["image_path"]): from_cell(r["target"])
            for r in read_rows(out, REVIEWED) if r.get("image_path")}


def queue(out: Storage) -> list[dict[str, Any]]:
    """The flagged images in the job's order, each with the answer it has so far (or None)."""
    given = answers(out)
    items = []
    for row in read_rows(out, REVIEW):
        path = from_cell(row.get("image_path", ""))
        confidence = row.get("confidence") or ""
        items.append({"image_path": path, "predicted": row.get("predicted") or None,
                      "confidence": float(confidence) if confidence else None,
                      "reason": row.get("reason", ""), "answer": given.get(path)})
    return items


def append_answer(out: Storage, image_path: str, target: str) -> int:
    """Append one `image_path,target` row; returns how many rows the file now has.

    Read, append, write whole: the caller holds the output's lock, so answers given at the
    same moment by two people both land.
    """
    existing = out.read(REVIEWED).decode("utf-8-sig") if out.head(REVIEWED) else ""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if not existing.strip():
        writer.writerow(REVIEWED_HEADER)
    elif not existing.endswith("\n"):
        buf.write("\n")
    writer.writerow((to_cell(image_path), to_cell(target)))
    text = existing + buf.getvalue()
    out.write(REVIEWED, text.encode())
    return sum(1 for _ in csv.reader(io.StringIO(text))) - 1


def thumbnail(src: Storage, key: str, max_pixels: int) -> bytes:
    """A JPEG at most THUMBNAIL_SIDE pixels wide and high; `ImageError` for a bad image."""
    img, _ = decode_image(src.read(key), max_pixels)
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
