"""One JSON error shape for every route: `{"error": reason, "kind": ...}` with its status."""

from __future__ import annotations

from starlette.responses import JSONResponse

from piston.errors import PistonError, RegistryError, StorageUnavailable, UnknownBundle
from piston.jobs import JobQueueUnavailable, UnknownJob


class ServiceError(PistonError):
    """A request the service answers with a 4xx/5xx: `kind` names it for clients and metrics."""

    status = 400

    def __init__(self, kind: str, reason: str, status: int | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        if status is not None:
            self.status = status
        self.retry_after_s = retry_after_s


# Our core errors as (status, kind, seconds to wait before a retry); the first match wins.
_CORE_ERRORS: list[tuple[type[Exception], int, str, int | None]] = [
    (UnknownBundle, 404, "unknown_bundle", None),
    (UnknownJob, 404, "unknown_job", None),
    (StorageUnavailable, 503, "unavailable", 5),
    (JobQueueUnavailable, 503, "unavailable", 5),
    (RegistryError, 409, "conflict", None),
]


def as_service_error(err: PistonError) -> ServiceError:
    """The HTTP reading of one of our errors (a registry refusal is a 409, and so on)."""
    if isinstance(err, ServiceError):
        return err
    for error_type, status, kind, retry in _CORE_ERRORS:
        if isinstance(err, error_type):
            return ServiceError(kind, str(err), status, retry)
    return ServiceError("bad_request", str(err), 400)


def error_response(err: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after_s)} if err.retry_after_s is not None else None
    return JSONResponse({"error": err.reason, "kind": err.kind}, status_code=err.status,
                        headers=headers)
