"""The public HTTP routes (a Starlette app BentoML mounts): classify, classify_batch, model.

Every bad input becomes a 4xx JSON `{"error", "kind"}`; anything unexpected is logged and
answered with a JSON 500, and the server keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.admin import AdminConfig, admin_routes
from service.engine import Engine, NotReady
from service.inputs import InputError, read_images, read_one_image

log = logging.getLogger(__name__)
Handler = Callable[[Request, Engine], Awaitable[Any]]


def build_app(get_engine: Callable[[], Engine], get_admin: Callable[[], AdminConfig]) -> Starlette:
    """The ASGI app with every piston route; `get_engine` gives the worker's engine."""

    def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                engine = get_engine()
            except NotReady as err:
                return JSONResponse({"error": f"not ready: {err}", "kind": "not_ready"},
                                    status_code=503, headers={"Retry-After": "1"})
            try:
                return JSONResponse(await handler(request, engine))
            except InputError as err:
                engine.metrics.error(err.kind)
                return JSONResponse({"error": err.reason, "kind": err.kind},
                                    status_code=err.status)
            except NotReady as err:
                engine.metrics.error("not_ready")
                return JSONResponse({"error": f"not ready: {err}", "kind": "not_ready"},
                                    status_code=503, headers={"Retry-After": "1"})
            except ClientDisconnect:  # gone (or cut off by the size limit): nobody to answer
                return Response(status_code=400)
            except Exception:
                log.exception("unexpected failure on %s", request.url.path)
                engine.metrics.error("internal")
                return JSONResponse({"error": "internal error, see the server log",
                                     "kind": "internal"}, status_code=500)
        return run

    async def classify(request: Request, engine: Engine) -> dict[str, Any]:
        return await engine.classify(await read_one_image(request))

    async def classify_batch(request: Request, engine: Engine) -> dict[str, Any]:
        images = await read_images(request, engine.limits.max_batch_images)
        return {"results": await engine.classify_many(images)}

    async def model(request: Request, engine: Engine) -> dict[str, Any]:
        return engine.model_info()

    routes = [
        Route("/classify", endpoint(classify), methods=["POST"]),
        Route("/classify_batch", endpoint(classify_batch), methods=["POST"]),
        Route("/model", endpoint(model), methods=["GET"]),
        *admin_routes(get_engine, get_admin),
    ]
    return Starlette(routes=routes)
