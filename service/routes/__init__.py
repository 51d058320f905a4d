"""Every route BentoML APIs cannot express (GET, path parameters), as mounted Starlette apps.

`build_app`: `/model`, the admin and job routes, `/docs.json` (BentoML's spec completed with
these routes, the product's name, description and version) and the Swagger page at `/`.
Mounted passively, so BentoML's own routes (`/classify`, `/livez`, `/metrics`, ...) answer
first. `console_app`: the console at `/ui`. Every admin route goes through one wrapper,
`auth.guarded`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from piston.errors import PistonError
from service.errors import error_response
from service.openapi import INDEX_HTML, service_spec
from service.routes.admin import admin_routes
from service.routes.auth import AdminConfig, Host, check_token
from service.routes.console import console_app
from service.routes.jobs import job_routes
from service.routes.monitor import monitor_routes
from service.routes.shadow import shadow_routes
from service.schemas import PRIVATE_MODEL_FIELDS

__all__ = ["AdminConfig", "Host", "build_app", "console_app"]


def build_app(get_host: Callable[[], Host], get_service: Callable[[], Any]) -> Starlette:
    """The mounted app; the getters give this worker's service instance and its Service."""
    admin = [*admin_routes(get_host), *job_routes(get_host), *shadow_routes(get_host),
             *monitor_routes(get_host)]
    spec: dict[str, Any] = {}

    async def model(request: Request) -> JSONResponse:
        """What is served; with the admin token, also why bundles were refused (paths)."""
        try:
            host = get_host()
            details = "authorization" in request.headers
            if details:
                check_token(request, host.admin)
            answer = host.engine.model_info()
            hidden = set() if details else set(PRIVATE_MODEL_FIELDS)
            return JSONResponse(answer.model_dump(mode="json", exclude=hidden))
        except PistonError as err:
            return error_response(err)

    async def docs(request: Request) -> JSONResponse:
        if not spec:  # built once per worker, on first use
            spec.update(service_spec(get_service(), admin))
        return JSONResponse(spec)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(INDEX_HTML)

    routes = [Route("/model", model, methods=["GET"]), Route("/", index, methods=["GET"]),
              Route("/docs.json", docs, methods=["GET"]), *admin]
    return Starlette(routes=routes)
