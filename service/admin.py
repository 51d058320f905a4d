"""Admin and job endpoints: bundles, history, promote, roll back, reload, jobs; Bearer token.

No token configured means admin is off: every admin call is refused (403), so a deployment
never runs with an open admin API by accident. Every answer, refusals included, is JSON;
an error is `{"error", "kind"}` like the public routes.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from piston import jobs
from piston.errors import AccessDenied, PistonError, RegistryError
from piston.registry import Registry
from service.engine import Engine
from service.errors import error_response
from service.monitor_api import monitor_handlers
from service.schemas import (
    BundleRow,
    HistoryAnswer,
    JobQueued,
    JobStatusAnswer,
    ModelsAnswer,
    MoveAnswer,
    PromoteBody,
    ReloadAnswer,
    RetrainBody,
    RollbackBody,
    ScoreJobBody,
)
from service.shadow_api import end_shadow, shadow_evidence, shadow_handlers

BodyT = TypeVar("BodyT", bound=BaseModel)
# (request, engine[, body]) -> answer; the body's and the answer's models are read from the
# handler's annotations, by the route (to validate) and by /docs.json (to document).
Handler = Callable[..., Awaitable[BaseModel | dict[str, Any]]]


@dataclass(frozen=True)
class AdminConfig:
    token: str | None
    redis_url: str
    default_dataset: str


def check_token(request: Request, config: AdminConfig) -> None:
    if not config.token:
        raise AccessDenied("admin endpoints are disabled: set PISTON_ADMIN_TOKEN to enable them",
                           kind="forbidden")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), config.token):
        raise AccessDenied("send the admin token as 'Authorization: Bearer <token>'")


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


def bundle_rows(registry: Registry) -> list[BundleRow]:
    """Every bundle, oldest first: summary, gates, headline metrics, production marked."""
    current = registry.current()
    rows = []
    for version in registry.versions():
        meta = registry.meta(version)
        rows.append(BundleRow(**meta.summary(), production=version == current,
                              gates=meta.gates, metrics=meta.metrics.headline()))
    return rows


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


def score_source(src: str) -> str:
    """An s3:// prefix as given; a folder must be absolute and exist on this server."""
    if src.startswith("s3://"):
        return src
    path = Path(src)
    if not path.is_absolute() or not path.is_dir():
        raise PistonError(f"src {src!r}: give an s3:// prefix or an absolute folder that exists"
                          " on the server", "invalid_body")
    return src


def admin_routes(get_engine: Callable[[], Engine], get_config: Callable[[], AdminConfig],
                 ) -> list[Route]:
    """The admin and job routes, each behind the token check."""

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
        body_model, _ = route_shapes(handler)

        @functools.wraps(handler)  # its docstring and annotations document it in /docs.json
        async def endpoint(request: Request) -> JSONResponse:
            try:
                config = get_config()
                check_token(request, config)
                body = [await read_body(request, body_model)] if body_model else []
                answer = await handler(request, get_engine(), *body)
                return JSONResponse(answer.model_dump(mode="json")
                                    if isinstance(answer, BaseModel) else answer)
            except PistonError as err:
                return error_response(err)
        return endpoint

    routes = {**registry_handlers(), **job_handlers(get_config), **shadow_handlers(),
              **monitor_handlers()}
    return [Route(path, guarded(handler), methods=[method])
            for (method, path), handler in routes.items()]


def registry_handlers() -> dict[tuple[str, str], Handler]:
    """Reading and moving the production pointer."""

    async def models(request: Request, engine: Engine) -> ModelsAnswer:
        """Every bundle (oldest first) with gates, headline metrics, `production` marked."""
        registry = registry_of(engine)
        rows = await asyncio.to_thread(bundle_rows, registry)
        current = next((r.version for r in rows if r.production), None)
        return ModelsAnswer(production=current, serving=engine.follower.status.version,
                            bundles=rows)

    async def history(request: Request, engine: Engine) -> HistoryAnswer:
        """Every promote and rollback, oldest first, and the version now in production."""
        moves = await asyncio.to_thread(registry_of(engine).history)
        return HistoryAnswer(production=moves[-1].version if moves else None, moves=moves)

    async def promote(request: Request, engine: Engine, body: PromoteBody) -> MoveAnswer:
        """Put a bundle in production (as `piston models promote`); this worker swaps at once."""
        evidence = await shadow_evidence(engine, body.version)
        move = await asyncio.to_thread(
            functools.partial(registry_of(engine).promote, body.version, body.reason,
                              by="admin-api", force=body.force, expected=body.expected))
        await asyncio.to_thread(engine.refresh)
        await end_shadow(engine, f"promoted {move.version}")
        return MoveAnswer(move=move, serving=engine.follower.status.version, shadow=evidence)

    async def rollback(request: Request, engine: Engine, body: RollbackBody) -> MoveAnswer:
        """Return production to the previous bundle, or to `to` (as `piston models rollback`)."""
        move = await asyncio.to_thread(
            functools.partial(registry_of(engine).rollback, body.reason, to=body.to,
                              by="admin-api", expected=body.expected))
        await asyncio.to_thread(engine.refresh)
        await end_shadow(engine, f"rolled back to {move.version}")
        return MoveAnswer(move=move, serving=engine.follower.status.version)

    async def reload(request: Request, engine: Engine) -> ReloadAnswer:
        """Re-read the production pointer now instead of at the next poll."""
        swapped = await asyncio.to_thread(engine.refresh)
        return ReloadAnswer(swapped=swapped, serving=engine.follower.status.version,
                            last_error=engine.follower.status.last_error)

    return {("GET", "/admin/models"): models, ("GET", "/admin/history"): history,
            ("POST", "/admin/promote"): promote, ("POST", "/admin/rollback"): rollback,
            ("POST", "/admin/reload"): reload}


def job_handlers(get_config: Callable[[], AdminConfig]) -> dict[tuple[str, str], Handler]:
    """Queueing jobs on the workers and reading their status."""

    async def retrain(request: Request, engine: Engine, body: RetrainBody) -> JobQueued:
        """Queue a retraining job on the workers (as `piston jobs retrain`)."""
        config = get_config()
        job_id = await asyncio.to_thread(
            jobs.enqueue_retrain, config.redis_url, body.dataset or config.default_dataset,
            body.overrides, body.promote_if_better)
        return JobQueued(job_id=job_id)

    async def score(request: Request, engine: Engine, body: ScoreJobBody) -> JobQueued:
        """Queue a batch-scoring job of every image under `src` (as `piston jobs score`)."""
        job_id = await asyncio.to_thread(jobs.enqueue_score, get_config().redis_url,
                                         score_source(body.src), body.out, body.only_new)
        return JobQueued(job_id=job_id)

    async def job(request: Request, engine: Engine) -> JobStatusAnswer:
        """A job's state and progress, or its summary once it ended."""
        status = await asyncio.to_thread(jobs.job_status, get_config().redis_url,
                                         request.path_params["job_id"])
        return JobStatusAnswer.model_validate(status)

    return {("POST", "/admin/retrain"): retrain, ("POST", "/jobs/score"): score,
            ("GET", "/jobs/{job_id}"): job}
