"""The bundle registry: published bundles, and a `production` pointer with its history.

Layout under the registry location (a folder or an S3 prefix):

    bundles/<version>.bentomodel   the exported BentoML model (tar), immutable once written
    bundles/<version>.json         its metadata and the archive's SHA-256 (checked on import)
    history/<seq>.json             one immutable entry per promote or rollback
    decisions/<version>.json       why a retrained bundle was (not) promoted

The history *is* the pointer: production is the version named by the newest entry. Each
move creates exactly one new object with an exclusive create (a hard link on disk, a
conditional PUT on S3), so a crash mid-move leaves the old pointer intact, and two ops
moving it at once cannot both win the same sequence number. A move may name the version it
expects production to be at (`expected`): checked against the entry it builds on, so a stale
or repeated move is refused and changes nothing.

Versions are checked (`piston.names`) before they touch a key. The registry reads only its own
key shapes (`history/<8 digits>.json`, top-level `bundles/<version>.json`): any other key under
its prefix is foreign (logged once, never production), and a history entry that does not parse
is a `RegistryError` naming its key, so a stray object can neither move nor wedge the pointer.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from piston.bundle import (
    BundleMeta,
    import_archive,
    local_model,
    local_store_lock,
    read_meta,
)
from piston.errors import (
    InputError,
    RegistryError,
    StaleProduction,
    StorageError,
    StorageUnavailable,
    UnknownBundle,
)
from piston.names import NOTHING, VERSION_RE, check_version
from piston.storage import Storage, open_storage

if TYPE_CHECKING:
    from piston.settings import Settings

log = logging.getLogger(__name__)
HISTORY_KEY = re.compile(r"history/(\d{8})\.json")
MAX_REASON_CHARS = 500  # a promote's or rollback's reason, kept in every history entry


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
    sha256: str | None = None  # the archive's digest, as recorded when it was published


def open_registry(settings: Settings) -> Registry:
    """The registry named by the settings: the one place it is built from them."""
    return Registry(open_storage(settings.registry, settings.s3_endpoint_url))


class Registry:
    """Publish, list, promote and roll back bundles stored in a `Storage`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._foreign: set[str] = set()  # keys already warned about

    def _own(self, prefix: str, shape: re.Pattern[str]) -> list[str]:
        """Keys under `prefix` of the registry's own `shape`, sorted; others warned about once."""
        keys = []
        for obj in self.storage.list(prefix):
            if shape.fullmatch(obj.key) and ".." not in obj.key:
                keys.append(obj.key)
            elif obj.key not in self._foreign:
                self._foreign.add(obj.key)
                log.warning("ignoring %s/%s: not a key the registry writes (foreign object)",
                            self.storage.uri, obj.key)
        return sorted(keys)

    # -- bundles ---------------------------------------------------------------------------

    def publish(self, version: str) -> None:
        """Copy a bundle from the local BentoML store into the registry (once; never replaced)."""
        import bentoml

        check_version(version)
        model = local_model(version)
        meta = read_meta(model.path)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / f"{version}.bentomodel"
            # Plain tar: the weights do not compress, so xz only costs time (docs/evaluation.md).
            exported = bentoml.models.export_model(
                str(model.tag), str(archive), output_format="tar"
            )
            data = Path(exported).read_bytes()
            if not self.storage.create(_archive_key(version), data):
                if self.storage.head(_meta_key(version)) is not None:
                    raise RegistryError(f"bundle {version} is already in the registry")
                data = self.storage.read(_archive_key(version))  # a half publish: finish it
        # Metadata last: a bundle is listed once its archive is whole, and a publish that died
        # between the two writes is finished by the next attempt instead of refused forever.
        meta = meta.model_copy(update={"archive_sha256": hashlib.sha256(data).hexdigest()})
        self.storage.write(_meta_key(version), meta.model_dump_json(indent=2).encode())
        log.info("published bundle %s to %s", version, self.storage.uri)

    def copy_from(self, source: Registry, version: str) -> None:
        """Add a bundle published in another registry, as it is there.

        Archive first, metadata last, like `publish`; the recorded digest travels with it and
        is checked when the bundle is imported.
        """
        if self.storage.head(_meta_key(version)) is not None:
            raise RegistryError(f"bundle {version} is already in the registry")
        self.storage.write(_archive_key(version), source.storage.read(_archive_key(version)))
        self.storage.write(_meta_key(version), source.storage.read(_meta_key(version)))

    def versions(self) -> list[str]:
        names = (k.removeprefix("bundles/").removesuffix(".json")
                 for k in self._own("bundles/", _BUNDLE_FILE) if k.endswith(".json"))
        return sorted(n for n in names if ".." not in n and n != NOTHING)

    def meta(self, version: str) -> BundleMeta:
        check_version(version)
        try:
            raw = self.storage.read(_meta_key(version))
        except StorageUnavailable:
            raise  # passing: the bundle may well exist
        except StorageError:
            raise UnknownBundle(
                f"no bundle {version!r} in the registry (see `piston models list`)"
            ) from None
        return BundleMeta.parse(raw, f"{self.storage.uri}/{_meta_key(version)}")

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
        """The bundle's folder in the local BentoML store, importing it from the registry if new.

        The archive must pass `archive`'s checks, and the model it holds must be the version
        asked for; otherwise nothing is imported.
        """
        with local_store_lock():  # BentoML's import copies over a concurrent one
            try:
                return Path(local_model(check_version(version)).path)
            except RegistryError:
                pass
            return import_archive(version, self.archive(version))

    def archive(self, version: str) -> bytes:
        """The bundle's archive, checked against the SHA-256 recorded when it was published
        (its sidecar) and against every history entry that put it in production.

        The sidecar is rewritten by a publish; history entries are created once and never
        replaced, so an archive swapped together with its sidecar is still caught.
        """
        meta = self.meta(version)
        data = self.storage.read(_archive_key(version))
        digest = hashlib.sha256(data).hexdigest()
        recorded = [("its sidecar", meta.archive_sha256)]
        recorded += [(f"history entry {m.seq}", m.sha256) for m in self.history()
                     if m.version == version]
        if not any(sha for _, sha in recorded):
            log.warning("bundle %s has no recorded digest (published before digests)", version)
        for source, sha in recorded:
            if sha is not None and digest != sha:
                raise RegistryError(
                    f"the archive of bundle {version} does not match its recorded SHA-256 in"
                    f" {source} ({digest[:12]} != {sha[:12]}): refused; publish it again")
        return data

    def split(self, version: str) -> dict[str, list[str]]:
        """The bundle's split lists (train/val/test keys), fetched into the local store."""
        raw = (self.fetch(version) / "split.json").read_text()
        return {k: list(v) for k, v in json.loads(raw).items()}

    def record_decision(self, version: str, decision: dict[str, Any]) -> None:
        """Store why a retrained bundle was (or was not) promoted, beside it."""
        body = json.dumps(decision, indent=2).encode()
        self.storage.write(f"decisions/{check_version(version)}.json", body)

    # -- the production pointer ------------------------------------------------------------

    def history(self) -> list[Move]:
        return [self._entry(k) for k in self._own("history/", HISTORY_KEY)]

    def _last_move(self) -> Move | None:
        """The newest history entry, read alone: polled every few seconds by every server."""
        keys = self._own("history/", HISTORY_KEY)
        return self._entry(keys[-1]) if keys else None

    def _entry(self, key: str) -> Move:
        """One history entry; a `RegistryError` naming the key when it does not parse."""
        where = f"history entry {self.storage.uri}/{key}"
        try:
            move = Move.model_validate_json(self.storage.read(key))
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "entry"
            raise RegistryError(f"{where} does not parse ({field}: {first['msg']}):"
                                " fix or remove it") from None
        if key != f"history/{move.seq:08d}.json":  # the next move would be created below it
            raise RegistryError(f"{where} says seq {move.seq}: fix or remove it")
        return move

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

    def promote(self, version: str, reason: str, *, by: str | None = None, force: bool = False,
                expected: str | None = None) -> Move:
        """Put `version` in production; a bundle whose gates failed needs `force`.

        `expected`: the version production must be at now ("none": nothing in production
        yet); None skips the check. A stale one raises `StaleProduction`.
        """
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
        return self._move("promote", lambda _: meta, reason, by, force, expected)

    def rollback(self, reason: str, *, to: str | None = None, by: str | None = None,
                 expected: str | None = None) -> Move:
        """Return production to the version it had before (or to `to`); `expected` as promote."""
        return self._move("rollback", lambda last: self._rollback_target(last, to), reason, by,
                          False, expected)

    def _rollback_target(self, last: Move | None, to: str | None) -> BundleMeta:
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
        return meta

    def _move(self, action: str, target: Callable[[Move | None], BundleMeta], reason: str,
              by: str | None, force: bool, expected: str | None) -> Move:
        """Create the next history entry, built on the newest one and checked against it."""
        if len(reason) > MAX_REASON_CHARS:
            raise InputError("invalid", f"the reason is {len(reason)} characters long, over the"
                             f" limit of {MAX_REASON_CHARS}: say it shorter")
        for _ in range(20):
            last = self._last_move()
            previous = last.version if last else None
            if expected is not None and expected != (previous or NOTHING):
                raise StaleProduction(
                    f"production is at {previous or NOTHING}, not {expected}: nothing changed;"
                    " check `piston models current` and try again"
                )
            meta = target(last)
            if previous == meta.version:
                raise RegistryError(f"bundle {meta.version} is already in production")
            move = Move(
                seq=(last.seq + 1) if last else 1, action=action, version=meta.version,
                previous=previous, at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                by=by or _who(), reason=reason, forced=force, sha256=meta.archive_sha256,
            )
            body = json.dumps(move.model_dump(), indent=2).encode()
            if self.storage.create(f"history/{move.seq:08d}.json", body):
                log.info("%s: production %s -> %s (%s)", action, previous, move.version, reason)
                return move
        raise RegistryError("the production pointer kept moving under us; try again")


# `bundles/<version>.json` and `.bentomodel`, top level only (the metadata is what lists one)
_BUNDLE_FILE = re.compile(rf"bundles/{VERSION_RE.pattern}\.(json|bentomodel)")


def _archive_key(version: str) -> str:
    return f"bundles/{check_version(version)}.bentomodel"


def _meta_key(version: str) -> str:
    return f"bundles/{check_version(version)}.json"


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
