"""`Storage` over a folder on disk; writes go to a temporary file that is renamed into place."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from stat import S_ISREG

from piston.errors import InvalidName, ObjectTooLarge, StorageError
from piston.storage.base import ObjectInfo


class LocalStorage:
    """A folder; keys never leave it (absolute keys and '..' are refused)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        if not key:
            return self.root
        parts = PurePosixPath(key).parts
        if key.startswith(("/", "\\")) or ".." in parts or "\\" in key:
            raise InvalidName(f"{key!r} is not a key inside {self.uri}")
        return self.root / key

    def _file(self, key: str) -> str:
        """`_path` as a string, checked by string operations: a batch job reads every image
        through here, and a path object per read cost half as much CPU as the read itself."""
        if not key or key.startswith(("/", "\\")) or "\\" in key or ".." in key.split("/"):
            return str(self._path(key))  # the root, or refused
        return f"{self.uri}/{key}"

    def read(self, key: str) -> bytes:
        return self.get(key)[0]

    def get(self, key: str, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        path = self._file(key)
        try:
            with open(path, "rb") as fh:
                stat = os.fstat(fh.fileno())  # of the file read, even if replaced meanwhile
                if max_bytes is not None and stat.st_size > max_bytes:
                    raise ObjectTooLarge(
                        f"{path} is {stat.st_size} bytes, over the {max_bytes} limit")
                data = fh.read()
        except FileNotFoundError:
            raise StorageError(f"{path} does not exist") from None
        except IsADirectoryError:
            raise StorageError(f"{path} is a folder, not a file") from None
        except OSError as err:
            raise StorageError(f"cannot read {path}: {err.strerror}") from None
        return data, ObjectInfo(key, stat.st_size, etag=_etag(stat))

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

    def replace(self, key: str, data: bytes, etag: str | None) -> bool:
        if etag is None:
            return self.create(key, data)
        target = self._path(key)
        with self._staged(key, data) as (tmp, _), _flocked(target):
            current = self.head(key)
            if current is None or current.etag != etag:
                return False
            os.replace(tmp, target)
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._path(prefix)
        if base.is_file():
            return [_info(prefix, base)]
        if not base.is_dir():
            return []
        # os.walk with each entry's own stat, not pathlib: a plan lists every image of a job
        # while the other worker processes wait for its shards (less than half the CPU, measured)
        found = []
        root = len(str(self.root)) + 1
        for folder, _, files in os.walk(base):
            for name in files:
                if name.startswith("."):
                    continue
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)  # follows a link, as is_file() did
                except OSError:  # gone meanwhile, or a dangling link
                    continue
                if S_ISREG(stat.st_mode):
                    found.append(ObjectInfo(path[root:].replace(os.sep, "/"), stat.st_size,
                                            etag=_etag(stat)))
        found.sort(key=lambda o: o.key.split("/"))  # pathlib's order: by path segment
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


@contextlib.contextmanager
def _flocked(target: Path) -> Iterator[None]:
    """An exclusive lock beside `target`: compare and replace as one step, across processes."""
    with (target.parent / f".{target.name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _info(key: str, path: Path) -> ObjectInfo:
    stat = path.stat()
    return ObjectInfo(key, stat.st_size, etag=_etag(stat))


def _etag(stat: os.stat_result) -> str:
    """A local file's ETag: its inode, modification time and size (a replaced file is new)."""
    return f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}"
