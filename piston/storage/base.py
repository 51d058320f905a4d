"""The storage interface: keys are '/'-separated and relative to the storage root."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key relative to the storage root, size, ETag and user metadata."""

    key: str
    size: int
    etag: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


class Storage(Protocol):
    """A local folder or an S3 prefix. `uri` is normalised (no trailing '/'): use it as a key."""

    uri: str

    def read(self, key: str) -> bytes: ...

    def get(self, key: str, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        """Content and info (size, ETag, user metadata) in one request.

        Raises `ObjectTooLarge` before reading an object over `max_bytes`.
        """

    def write(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """Replace `key` atomically: readers see the old or the new content, never a mix."""

    def create(self, key: str, data: bytes) -> bool:
        """Write `key` only if it does not exist yet; False when it already did."""

    def replace(self, key: str, data: bytes, etag: str | None) -> bool:
        """Write `key` only if its ETag is still `etag` (None: only if it does not exist).

        False when another writer got there first: read again and retry.
        """

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def delete(self, key: str) -> None: ...

    def child(self, prefix: str) -> Storage: ...

    def local_path(self, key: str) -> Path | None:
        """The file behind `key` when the storage is local (lets PIL and torch read in place)."""
