"""What every non-BentoML route shares: the host it reads, the admin token rule, one wrapper.

No token configured means admin is off: every guarded route is refused (403), so a
deployment never runs with an open admin API by accident. Errors are our own
(`piston.errors`), answered by the service's one error shape `{"error", "kind"}`.
"""

from __future__ import annotations

import functools
import inspect
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from piston.errors import AccessDenied, PistonError, RegistryError
from piston.registry import Registry
from piston.settings import Settings
from service.engine import Engine
from service.errors import error_response

BodyT = TypeVar("BodyT", bound=BaseModel)


@dataclass(frozen=True)
class AdminConfig:
    token: str | None
    redis_url: str
    default_dataset: str


class Host(Protocol):
    """What the routes need from the running service instance."""

    settings: Settings
    engine: Engine
    admin: AdminConfig


# (request, host[, body]) -> answer: a pydantic model, a Response, or anything JSON-ready. The
# body's and the answer's models are read from the handler's annotations, by `guarded` (to
# validate) and by /docs.json (to document).
Handler = Callable[..., Awaitable[Any]]


def check_token(request: Request, config: AdminConfig) -> None:
    if not config.token:
        raise AccessDenied("admin endpoints are disabled: set PISTON_ADMIN_TOKEN to enable them",
                           kind="forbidden")
    if not token_matches(request, config.token):
        raise AccessDenied("send the admin token as 'Authorization: Bearer <token>'")


def token_matches(request: Request, token: str) -> bool:
    """Whether the request carries `token` as a Bearer token (compared as bytes, in constant
    time: `compare_digest` raises on non-ASCII text, and a header may hold any byte)."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def route_shapes(endpoint: Callable[..., Any],
                 ) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """The body model and the answer model a route's handler declares (None: none, or a dict)."""
    handler = inspect.unwrap(endpoint)

    def model(name: str) -> type[BaseModel] | None:
        found = handler.__annotations__.get(name)
        if isinstance(found, str):  # postponed annotations: resolve this one name only
            found = eval(found, handler.__globals__)
        return found if isinstance(found, type) and issubclass(found, BaseModel) else None

    return model("body"), model("return")


def guarded(get_host: Callable[[], Host], handler: Handler,
            ) -> Callable[[Request], Awaitable[Response]]:
    """The admin token, the body its model declares, then the handler; our errors become
    their 4xx (503: retry). The one wrapper of every admin, job and console route."""
    body_model, _ = route_shapes(handler)

    @functools.wraps(handler)  # its docstring and annotations document it in /docs.json
    async def endpoint(request: Request) -> Response:
        try:
            host = get_host()
            check_token(request, host.admin)
            body = [await read_body(request, body_model)] if body_model else []
            answer = await handler(request, host, *body)
        except PistonError as err:
            return error_response(err)
        if isinstance(answer, Response):
            return answer
        return JSONResponse(answer.model_dump(mode="json") if isinstance(answer, BaseModel)
                            else answer)
    return endpoint


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def read_body(request: Request, model: type[BodyT]) -> BodyT:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise PistonError(f"bad request body: {where}: {first['msg']}", "invalid_body") from None


def registry_of(engine: Engine) -> Registry:
    if engine.follower.registry is None:
        raise RegistryError("this service has no registry (a pinned bento)")
    return engine.follower.registry
