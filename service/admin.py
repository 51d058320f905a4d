"""Admin endpoints: promote, roll back, reload, retrain, job status; Bearer token required.

No token configured means admin is off: every admin call is refused (403), so a deployment
never runs with an open admin API by accident.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from piston import jobs
from piston.errors import PistonError, StorageUnavailable, UnknownBundle
from piston.jobs import JobQueueUnavailable
from service.engine import Engine

BodyT = TypeVar("BodyT", bound=BaseModel)


@dataclass(frozen=True)
class AdminConfig:
    token: str | None
    redis_url: str
    default_dataset: str


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    reason: str = Field(min_length=1)
    force: bool = False


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1)
    to: str | None = None


class RetrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    promote_if_better: bool = False


class AdminError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_token(request: Request, config: AdminConfig) -> None:
    if not config.token:
        raise AdminError(403, "admin endpoints are disabled: set PISTON_ADMIN_TOKEN to enable them")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), config.token):
        raise AdminError(401, "send the admin token as 'Authorization: Bearer <token>'")


async def _body(request: Request, model: type[BodyT]) -> BodyT:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise AdminError(422, f"bad request body: {where}: {first['msg']}") from None


def admin_routes(get_engine: Callable[[], Engine], get_config: Callable[[], AdminConfig],
                 ) -> list[Route]:
    """The admin routes, each behind the token check and mapping our errors to 4xx."""

    def guarded(handler: Callable[[Request, Engine], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                check_token(request, get_config())
                return JSONResponse(await handler(request, get_engine()))
            except AdminError as err:
                return JSONResponse({"error": err.reason}, status_code=err.status)
            except UnknownBundle as err:
                return JSONResponse({"error": str(err)}, status_code=404)
            except (StorageUnavailable, JobQueueUnavailable) as err:  # passing: try again
                return JSONResponse({"error": str(err)}, status_code=503,
                                    headers={"Retry-After": "5"})
            except PistonError as err:
                return JSONResponse({"error": str(err)}, status_code=409)
        return endpoint

    def registry(engine: Engine) -> Any:
        if engine.follower.registry is None:
            raise AdminError(409, "this service has no registry (a pinned bento)")
        return engine.follower.registry

    async def promote(request: Request, engine: Engine) -> dict[str, Any]:
        body = await _body(request, PromoteBody)
        move = await asyncio.to_thread(registry(engine).promote, body.version, body.reason,
                                       by="admin-api", force=body.force)
        await asyncio.to_thread(engine.refresh)
        return {"move": move.model_dump(), "serving": engine.follower.status.version}

    async def rollback(request: Request, engine: Engine) -> dict[str, Any]:
        body = await _body(request, RollbackBody)
        move = await asyncio.to_thread(registry(engine).rollback, body.reason,
                                       to=body.to, by="admin-api")
        await asyncio.to_thread(engine.refresh)
        return {"move": move.model_dump(), "serving": engine.follower.status.version}

    async def reload(request: Request, engine: Engine) -> dict[str, Any]:
        swapped = await asyncio.to_thread(engine.refresh)
        return {"swapped": swapped, "serving": engine.follower.status.version,
                "last_error": engine.follower.status.last_error}

    async def retrain(request: Request, engine: Engine) -> dict[str, Any]:
        body = await _body(request, RetrainBody)
        try:
            config = get_config()
            job_id = await asyncio.to_thread(
                jobs.enqueue_retrain, config.redis_url, body.dataset or config.default_dataset,
                body.overrides, body.promote_if_better)
        except Exception as err:  # broker down: the client can retry
            raise AdminError(503, f"the job queue is unavailable: {err}") from None
        return {"job_id": job_id, "state": "PENDING"}

    async def job(request: Request, engine: Engine) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(jobs.job_status, get_config().redis_url,
                                           request.path_params["job_id"])
        except jobs.UnknownJob as err:
            raise AdminError(404, str(err)) from None
        except Exception as err:
            raise AdminError(503, f"the job queue is unavailable: {err}") from None

    return [
        Route("/admin/promote", guarded(promote), methods=["POST"]),
        Route("/admin/rollback", guarded(rollback), methods=["POST"]),
        Route("/admin/reload", guarded(reload), methods=["POST"]),
        Route("/admin/retrain", guarded(retrain), methods=["POST"]),
        Route("/jobs/{job_id}", guarded(job), methods=["GET"]),
    ]
