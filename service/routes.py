"""The routes BentoML APIs cannot express (GET, path parameters), as a mounted Starlette app.

`/model`, the admin and job routes, `/docs.json` (BentoML's spec completed with these
routes, the product's name, description and version) and the Swagger page at `/`. Mounted
passively, so BentoML's own routes (`/classify`, `/livez`, `/metrics`, ...) answer first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from piston.errors import PistonError
from service.admin import AdminConfig, admin_routes
from service.engine import Engine
from service.errors import error_response
from service.openapi import INDEX_HTML, service_spec


def build_app(get_engine: Callable[[], Engine], get_admin: Callable[[], AdminConfig],
              get_service: Callable[[], Any]) -> Starlette:
    """The mounted app; the getters give this worker's engine, admin config and Service."""
    admin = admin_routes(get_engine, get_admin)
    spec: dict[str, Any] = {}

    async def model(request: Request) -> JSONResponse:
        try:
            return JSONResponse(get_engine().model_info().model_dump(mode="json"))
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
