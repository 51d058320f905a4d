"""Every error type of ours, and the one map from an error's `kind` to an HTTP status.

The edges (CLI, HTTP, tasks) turn them into a one-line message (`str(err)`), a non-zero exit
or a 4xx/503 answer `{"error": str(err), "kind": err.kind}` with `status_of(err.kind)`.
"""

from __future__ import annotations

# HTTP status of each kind. Image kinds come from decoding; the rest from the classes below.
STATUS_BY_KIND: dict[str, int] = {
    "invalid": 400,
    "empty": 400,
    "missing_field": 400,
    "bad_request": 400,
    "invalid_name": 400,
    "invalid_data": 400,
    "invalid_config": 400,
    "storage": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "stale": 409,
    "needs_redis": 409,
    "too_large": 413,
    "too_many_images": 413,
    "too_many_pixels": 413,
    "unsupported_media_type": 415,
    "unsupported_format": 415,
    "not_an_image": 415,
    "truncated": 422,
    "invalid_body": 422,
    "unavailable": 503,
    "not_ready": 503,
    "overloaded": 503,
}


def status_of(kind: str) -> int:
    """The HTTP status for an error kind (400 for a kind this map does not know)."""
    return STATUS_BY_KIND.get(kind, 400)


class PistonError(Exception):
    """Base of every error a user can fix; `str(err)` is the one-line message shown to them."""

    kind = "invalid"

    def __init__(self, message: str = "", kind: str | None = None) -> None:
        super().__init__(message)
        self.reason = message
        if kind is not None:
            self.kind = kind

    @property
    def status(self) -> int:
        return status_of(self.kind)


class InputError(PistonError):
    """A request or input that cannot be used as given; `kind` picks the status."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason, kind)


class ImageError(InputError):
    """An input that is not a usable image. `kind` names the failure for metrics and HTTP codes."""


class InvalidName(PistonError):
    """A version, job id or key that is not in the accepted format (it would touch a path)."""

    kind = "invalid_name"


class NotReady(PistonError):
    """No model is loaded yet: answer 503 until one is."""

    kind = "not_ready"


class Overloaded(PistonError):
    """Every decode thread is busy and the queue is full: answer 503, come back shortly."""

    kind = "overloaded"


class AccessDenied(PistonError):
    """A caller without the right credentials (`kind`: "unauthorized" or "forbidden")."""

    kind = "unauthorized"


class DataError(PistonError):
    """A data set that cannot be trained on as given."""

    kind = "invalid_data"


class ConfigError(PistonError):
    """A training configuration that does not validate."""

    kind = "invalid_config"


class RegistryError(PistonError):
    """A registry operation that cannot be carried out (unknown version, failed gates, ...)."""

    kind = "conflict"


class UnknownBundle(RegistryError):
    """A version that no bundle in the registry has."""

    kind = "not_found"


class StaleProduction(RegistryError):
    """A promote or rollback that expected production at another version: nothing changed."""

    kind = "stale"


class StorageError(PistonError):
    """A storage location that cannot be read or written."""

    kind = "storage"


class ObjectTooLarge(StorageError):
    """An object over the size cap: refused before it is read whole."""

    kind = "too_large"


class StorageUnavailable(StorageError):
    """The store could not be reached or failed on its side: worth retrying later."""

    kind = "unavailable"


class UnknownJob(PistonError):
    """A job id that no job has (or whose record has expired)."""

    kind = "not_found"


class JobQueueUnavailable(PistonError):
    """Redis (the broker and job records) cannot be reached: worth retrying later."""

    kind = "unavailable"


class LiveStoreUnavailable(PistonError):
    """Shadow scoring and the drift watch keep their counts in Redis, which cannot be reached."""

    kind = "needs_redis"
