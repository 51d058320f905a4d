"""What every console API route shares: the host it reads, the token check, the error shape.

Errors are our own (`piston.errors`), each with its `kind` and status, answered as
`{"error", "kind"}` like every other route of the service.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from piston.errors import AccessDenied, InputError, PistonError, RegistryError
from piston.registry import Registry
from piston.settings import Settings
from service.admin import AdminConfig
from service.engine import Engine

BodyT = TypeVar("BodyT", bound=BaseModel)
RETRY_AFTER_S = "5"


class Host(Protocol):
    """What the console needs from the running service instance."""

    settings: Settings
    engine: Engine
    admin: AdminConfig


Handler = Callable[[Request, Host], Awaitable[Response]]


def error(err: PistonError) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_S} if err.status == 503 else None
    return JSONResponse({"error": str(err), "kind": err.kind}, status_code=err.status,
                        headers=headers)


def check_token(request: Request, config: AdminConfig) -> None:
    """The admin API's rule: no token configured means admin is off."""
    if not config.token:
        raise AccessDenied("admin endpoints are disabled: set PISTON_ADMIN_TOKEN to enable them",
                           "forbidden")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), config.token):
        raise AccessDenied("send the admin token as 'Authorization: Bearer <token>'")


def guarded(get_host: Callable[[], Host], handler: Handler) -> Callable[[Request], Any]:
    """The admin token first, then the handler; our errors become their 4xx (503: retry)."""

    async def endpoint(request: Request) -> Response:
        try:
            host = get_host()
            check_token(request, host.admin)
            return await handler(request, host)
        except PistonError as err:
            return error(err)
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
        raise InputError("invalid_body", f"bad request body: {where}: {first['msg']}") from None


def registry_of(host: Host) -> Registry:
    registry = host.engine.follower.registry
    if registry is None:
        raise RegistryError("this service has no registry (a pinned bento)")
    return registry
