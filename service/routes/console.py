"""The console's routes (`/ui`): the page and its assets, and the admin-only data behind it.

Mounted at `/ui` after the piston routes, so a `/classify` request never reaches it. Every
`/api` route takes the admin token like the admin API and answers `{"error", "kind"}` on
failure; the page calls the public and admin APIs directly for everything else. The static
files and the logic behind the views live in `service.console`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

import service.console
import service.console.recent as recent
from piston.errors import InputError
from service.console.bundles import Reports, details
from service.errors import error_response
from service.routes.auth import Host, guarded, registry_of
from service.routes.review import review_routes

STATIC = Path(service.console.__file__).parent / "static"
ASSETS = {"console.css": "text/css; charset=utf-8",
          "console.js": "text/javascript; charset=utf-8",
          "favicon.svg": "image/svg+xml",
          "live.js": "text/javascript; charset=utf-8", "live.css": "text/css; charset=utf-8"}
# The page loads nothing from elsewhere, and no other site may frame it (clickjacking the
# promote buttons); reports show in a sandboxed frame.
CSP = ("default-src 'self'; img-src 'self' data: blob:; frame-src 'self' blob: data:;"
       " style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors 'none'")
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": CSP, "X-Frame-Options": "DENY"}
# A report is a bundle's own HTML: even opened alone it runs no script, has an opaque origin
# and loads nothing but its inlined pictures.
REPORT_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
REPORT_HEADERS = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff",
                  "Content-Security-Policy": REPORT_CSP}


def console_app(get_host: Callable[[], Host]) -> Starlette:
    """The `/ui` app; `get_host` gives the running service instance (it starts after us)."""
    reports = Reports()

    async def page(request: Request) -> Response:
        if not request.url.path.endswith("/"):  # relative asset links need the slash
            return RedirectResponse(f"{request.url.path}/", status_code=307)
        return HTMLResponse((STATIC / "index.html").read_bytes(), headers=PAGE_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return error_response(InputError("not_found", f"no console asset {name!r}"))
        return Response((STATIC / name).read_bytes(), media_type=ASSETS[name],
                        headers=PAGE_HEADERS)

    async def report(request: Request, host: Host) -> Response:
        html = await asyncio.to_thread(reports.page, registry_of(host.engine),
                                       request.path_params["version"])
        return HTMLResponse(html, headers=REPORT_HEADERS)

    async def bundles(request: Request, host: Host) -> Response:
        return JSONResponse({"bundles": await asyncio.to_thread(details, registry_of(host.engine))})

    async def jobs(request: Request, host: Host) -> Response:
        found = await asyncio.to_thread(recent.recent_jobs, host.admin.redis_url)
        return JSONResponse({"jobs": found})

    return Starlette(routes=[
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", asset, methods=["GET"]),
        Route("/api/models", guarded(get_host, bundles), methods=["GET"]),
        Route("/api/models/{version}/report", guarded(get_host, report), methods=["GET"]),
        Route("/api/jobs", guarded(get_host, jobs), methods=["GET"]),
        *review_routes(get_host),
    ])
