"""What every console API route shares: the host it reads, the token check, the error shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from piston.errors import ImageError, PistonError, StorageUnavailable, UnknownBundle
from piston.jobs import JobQueueUnavailable, UnknownJob
from piston.registry import Registry
from piston.settings import Settings
from service.admin import AdminConfig, AdminError, check_token
from service.engine import Engine

BodyT = TypeVar("BodyT", bound=BaseModel)


class Host(Protocol):
    """What the console needs from the running service instance."""

    settings: Settings
    engine: Engine
    admin: AdminConfig


Handler = Callable[[Request, Host], Awaitable[Response]]


def error(status: int, kind: str, reason: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": reason, "kind": kind}, status_code=status, headers=headers)


def guarded(get_host: Callable[[], Host], handler: Handler) -> Callable[[Request], Any]:
    """The admin token first, then the handler; our errors become 4xx (503: try again)."""

    async def endpoint(request: Request) -> Response:
        try:
            host = get_host()
            check_token(request, host.admin)
            return await handler(request, host)
        except AdminError as err:
            kind = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                    409: "conflict"}.get(err.status, "bad_request")
            return error(err.status, kind, err.reason)
        except (UnknownBundle, UnknownJob) as err:
            return error(404, "not_found", str(err))
        except ImageError as err:
            return error(422, err.kind, err.reason)
        except (StorageUnavailable, JobQueueUnavailable) as err:
            return error(503, "unavailable", str(err), **{"Retry-After": "5"})
        except PistonError as err:
            return error(409, "conflict", str(err))
    return endpoint


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def parse(request: Request, model: type[BodyT]) -> BodyT:
    """A JSON body as `model`; a 422 naming the first bad field."""
    try:
        return model.model_validate_json(await request.body() or b"{}")
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise AdminError(422, f"bad request body: {where}: {first['msg']}") from None


def registry_of(host: Host) -> Registry:
    registry = host.engine.follower.registry
    if registry is None:
        raise AdminError(409, "this service has no registry (a pinned bento)")
    return registry
