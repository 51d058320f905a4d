"""Locations compared by path segment: is this folder or s3:// prefix under that one?

A folder is normalised through `realpath` (symlinks and `.` resolved), an s3:// URI by
dropping empty and `.` segments (S3 would keep them, which only makes a key differ); any `..`
is refused outright rather than interpreted.
"""

from __future__ import annotations

import os


def segments(location: str) -> list[str] | None:
    """`location` as normalised path segments (None when it holds a `..`)."""
    if ".." in location.replace("\\", "/").split("/"):
        return None
    if location.startswith("s3://"):
        parts = location.removeprefix("s3://").split("/")
        return ["s3:", *(p for p in parts if p not in ("", "."))]
    return ["file:", *(p for p in os.path.realpath(location).split(os.sep) if p)]


def within(inner: list[str], outer: list[str]) -> bool:
    return len(outer) > 1 and inner[:len(outer)] == outer


def under_roots(location: str, roots: list[str]) -> bool:
    """Whether `location` (a folder or an s3:// prefix) lies under one of `roots`."""
    target = segments(location)
    return target is not None and any(
        within(target, root) for root in map(segments, roots) if root is not None)
