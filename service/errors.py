"""One JSON error shape for every route: `{"error": reason, "kind": ...}` with its status.

The status comes from `piston.errors.status_of(kind)`, the one map shared with the CLI and
the workers; a 503 also says when to come back.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from piston.errors import PistonError, status_of

# Seconds a client should wait before retrying a 503, by kind.
RETRY_AFTER_S = {"not_ready": 1, "overloaded": 1, "unavailable": 5}


def error_response(err: PistonError) -> JSONResponse:
    retry = RETRY_AFTER_S.get(err.kind)
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return JSONResponse({"error": str(err), "kind": err.kind}, status_code=status_of(err.kind),
                        headers=headers)
