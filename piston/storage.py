"""One small interface over local folders and S3 prefixes.

Data sets, batch inputs, results and the bundle registry all go through `Storage`, so each
accepts either a local path or an `s3://bucket/prefix` URI.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from piston.errors import StorageError


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key relative to the storage root, size, ETag and user metadata."""

    key: str
    size: int
    etag: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


class Storage(Protocol):
    """Keys are '/'-separated and relative to the storage root."""

    uri: str

    def read(self, key: str) -> bytes: ...

    def write(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """Replace `key` atomically: readers see the old or the new content, never a mix."""

    def create(self, key: str, data: bytes) -> bool:
        """Write `key` only if it does not exist yet; False when it already did."""

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def delete(self, key: str) -> None: ...

    def child(self, prefix: str) -> Storage: ...

    def local_path(self, key: str) -> Path | None:
        """The file behind `key` when the storage is local (lets PIL and torch read in place)."""


class LocalStorage:
    """A folder on disk; writes go to a temporary file that is renamed into place."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self._path(key)} does not exist") from None
        except OSError as err:
            raise StorageError(f"cannot read {self._path(key)}: {err.strerror}") from None

    @contextlib.contextmanager
    def _staged(self, key: str, data: bytes) -> Iterator[tuple[Path, Path]]:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            yield Path(tmp), target
        finally:
            Path(tmp).unlink(missing_ok=True)

    def write(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        with self._staged(key, data) as (tmp, target):
            os.replace(tmp, target)

    def create(self, key: str, data: bytes) -> bool:
        with self._staged(key, data) as (tmp, target):
            try:
                os.link(tmp, target)  # atomic, and fails if the target exists
            except FileExistsError:
                return False
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._path(prefix)
        if base.is_file():
            return [_info(prefix, base)]
        if not base.is_dir():
            return []
        found = []
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                rel = path.relative_to(self.root).as_posix()
                found.append(_info(rel, path))
        return found

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return _info(key, path) if path.is_file() else None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def child(self, prefix: str) -> LocalStorage:
        return LocalStorage(self._path(prefix))

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


def _info(key: str, path: Path) -> ObjectInfo:
    """A local file's ETag is its modification time and size: a replaced file is a new object."""
    stat = path.stat()
    return ObjectInfo(key, stat.st_size, etag=f"{stat.st_mtime_ns:x}-{stat.st_size:x}")


def open_storage(location: str | Path, s3_endpoint_url: str | None = None) -> Storage:
    """Storage for a local path or an `s3://bucket/prefix` URI."""
    text = str(location)
    if text.startswith("s3://"):
        from piston.s3 import S3Storage  # boto3 only where S3 is used

        return S3Storage.from_uri(text, endpoint_url=s3_endpoint_url)
    return LocalStorage(text)
