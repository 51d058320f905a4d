"""What every console API route shares: the host it reads and the admin API's token rule.

Errors are our own (`piston.errors`), answered by the service's one error shape
`{"error", "kind"}` with the status of their kind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response

from piston.errors import PistonError
from piston.settings import Settings
from service.admin import AdminConfig, check_token
from service.engine import Engine
from service.errors import error_response


class Host(Protocol):
    """What the console needs from the running service instance."""

    settings: Settings
    engine: Engine
    admin: AdminConfig


Handler = Callable[[Request, Host], Awaitable[Response]]


def guarded(get_host: Callable[[], Host], handler: Handler) -> Callable[[Request], Any]:
    """The admin token first, then the handler; our errors become their 4xx (503: retry)."""

    async def endpoint(request: Request) -> Response:
        try:
            host = get_host()
            check_token(request, host.admin)
            return await handler(request, host)
        except PistonError as err:
            return error_response(err)
    return endpoint


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
