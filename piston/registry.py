"""The bundle registry: published bundles, and a `production` pointer with its history.

Layout under the registry location (a folder or an S3 prefix):

    bundles/<version>.bentomodel   the exported BentoML model (tar), immutable once written
    bundles/<version>.json         its metadata, for listing without downloading weights
    history/<seq>.json             one immutable entry per promote or rollback

The history *is* the pointer: production is the version named by the newest entry. Each
move creates exactly one new object with an exclusive create (a hard link on disk, a
conditional PUT on S3), so a crash mid-move leaves the old pointer intact, and two ops
moving it at once cannot both win the same sequence number.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from piston.bundle import MODEL_NAME, BundleMeta, local_model, read_meta
from piston.errors import RegistryError, StorageError, UnknownBundle
from piston.storage import Storage

log = logging.getLogger(__name__)


class Move(BaseModel):
    """One history entry: production went from `previous` to `version`."""

    seq: int
    action: str
    version: str
    previous: str | None
    at: str
    by: str
    reason: str
    forced: bool = False


class Registry:
    """Publish, list, promote and roll back bundles stored in a `Storage`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # -- bundles ---------------------------------------------------------------------------

    def publish(self, version: str) -> None:
        """Copy a bundle from the local BentoML store into the registry (once; never replaced)."""
        import bentoml

        model = local_model(version)
        meta = read_meta(model.path)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / f"{version}.bentomodel"
            # Plain tar: the weights do not compress, and xz took ~10 s a bundle.
            exported = bentoml.models.export_model(
                str(model.tag), str(archive), output_format="tar"
            )
            archive_key = f"bundles/{version}.bentomodel"
            created = self.storage.create(archive_key, Path(exported).read_bytes())
            if not created and self.storage.head(f"bundles/{version}.json") is not None:
                raise RegistryError(f"bundle {version} is already in the registry")
        # Metadata last: a bundle is listed once its archive is whole, and a publish that died
        # between the two writes is finished by the next attempt instead of refused forever.
        self.storage.write(f"bundles/{version}.json", meta.model_dump_json(indent=2).encode())
        log.info("published bundle %s to %s", version, self.storage.uri)

    def versions(self) -> list[str]:
        names = [o.key.rsplit("/", 1)[-1] for o in self.storage.list("bundles/")]
        return sorted(n.removesuffix(".json") for n in names if n.endswith(".json"))

    def meta(self, version: str) -> BundleMeta:
        try:
            raw = self.storage.read(f"bundles/{version}.json")
        except StorageError:
            raise UnknownBundle(
                f"no bundle {version!r} in the registry (see `piston models list`)"
            ) from None
        return BundleMeta.model_validate_json(raw)

    def bundles(self) -> list[dict[str, Any]]:
        """Summaries of every bundle, oldest first, with which one is in production."""
        current = self.current()
        rows = []
        for version in self.versions():
            row = self.meta(version).summary()
            row["production"] = version == current
            rows.append(row)
        return rows

    def fetch(self, version: str) -> Path:
        """The bundle's folder in the local BentoML store, importing it from the registry if new."""
        import bentoml

        with _local_store_lock():  # BentoML's import copies over a concurrent one
            try:
                return Path(local_model(version).path)
            except RegistryError:
                pass
            self.meta(version)  # a clear error for an unknown version
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / f"{version}.bentomodel"
                archive.write_bytes(self.storage.read(f"bundles/{version}.bentomodel"))
                bentoml.models.import_model(str(archive), input_format="tar")
            return Path(bentoml.models.get(f"{MODEL_NAME}:{version}").path)

    # -- the production pointer ------------------------------------------------------------

    def history(self) -> list[Move]:
        entries = [o.key for o in self.storage.list("history/") if o.key.endswith(".json")]
        return [Move.model_validate_json(self.storage.read(k)) for k in sorted(entries)]

    def _last_move(self) -> Move | None:
        """The newest history entry, read alone: polled every few seconds by every server."""
        keys = sorted(o.key for o in self.storage.list("history/") if o.key.endswith(".json"))
        return Move.model_validate_json(self.storage.read(keys[-1])) if keys else None

    def current(self) -> str | None:
        """The version in production, or None before the first promote."""
        last = self._last_move()
        return last.version if last else None

    def production(self, hint: str) -> str:
        """The version in production; a RegistryError ending in `hint` when there is none."""
        current = self.current()
        if current is None:
            raise RegistryError(f"no bundle is in production: {hint}")
        return current

    def promote(
        self, version: str, reason: str, by: str | None = None, force: bool = False
    ) -> Move:
        """Put `version` in production; a bundle whose gates failed needs `force`."""
        meta = self.meta(version)
        if not meta.gates_passed and not force:
            failed = ", ".join(
                f"{g.name} {g.value:.3f} (bar {g.threshold})" for g in meta.gates if not g.passed
            )
            raise RegistryError(
                f"bundle {version} failed its quality gates ({failed or 'no gates'});"
                " pass --force with a --reason to promote it anyway"
            )
        if force and not reason.strip():
            raise RegistryError("a forced promote needs a --reason")
        return self._move("promote", version, reason, by, force)

    def rollback(self, reason: str, to: str | None = None, by: str | None = None) -> Move:
        """Return production to the version it had before (or to `to`)."""
        last = self._last_move()
        if last is None:
            raise RegistryError("nothing is in production yet: there is nothing to roll back")
        target = to or last.previous
        if target is None:
            raise RegistryError(
                f"production ({last.version}) has no previous version; name one with --to"
            )
        meta = self.meta(target)
        served_before = any(m.version == target for m in self.history())
        if not meta.gates_passed and not served_before:
            raise RegistryError(
                f"bundle {target} failed its quality gates and was never in production:"
                " promote it with --force and a --reason instead"
            )
        return self._move("rollback", target, reason, by, force=False)

    def _move(self, action: str, version: str, reason: str, by: str | None, force: bool) -> Move:
        for _ in range(20):
            last = self._last_move()
            previous = last.version if last else None
            if previous == version:
                raise RegistryError(f"bundle {version} is already in production")
            move = Move(
                seq=(last.seq + 1) if last else 1,
                action=action,
                version=version,
                previous=previous,
                at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                by=by or _who(),
                reason=reason,
                forced=force,
            )
            body = json.dumps(move.model_dump(), indent=2).encode()
            if self.storage.create(f"history/{move.seq:08d}.json", body):
                log.info("%s: production %s -> %s (%s)", action, previous, version, reason)
                return move
        raise RegistryError("the production pointer kept moving under us; try again")


@contextlib.contextmanager
def _local_store_lock() -> Iterator[None]:
    """One importer at a time per BentoML home, across processes (service and job workers)."""
    home = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".piston-import.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
