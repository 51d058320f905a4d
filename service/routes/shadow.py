"""The admin routes of shadow scoring: start, stop and read it; a move ends it.

`POST /admin/shadow` writes the spec to Redis and loads the candidate on the answering worker
at once (a candidate that cannot load ends the shadow and is refused with the reason); the
other workers load it at their next tick.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.routing import Route

from piston import shadow
from piston.errors import LiveStoreUnavailable, PistonError
from service.engine import Engine
from service.evidence import shadow_of
from service.routes.auth import Host, guarded, read_body
from service.shadow import ShadowScorer

log = logging.getLogger(__name__)


class ShadowBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, description="the candidate bundle")
    share: float = Field(0.2, gt=0, le=1, description="fraction of live images it scores")
    expected: str = Field(description="the version production is at now, as you last saw it")


def scorer_of(engine: Engine) -> ShadowScorer:
    scorer = shadow_of(engine)
    if scorer is None:
        raise PistonError("this service runs without shadow scoring", "conflict")
    return scorer


async def post(request: Request, host: Host) -> dict[str, Any]:
    """Shadow a candidate on a share of live images (as `piston models shadow`)."""
    return await start(host.engine, await read_body(request, ShadowBody))


async def post_stop(request: Request, host: Host) -> dict[str, Any]:
    """End the shadow (its figures stay readable until they expire)."""
    return await stop(host.engine, "stopped by admin-api")


async def get(request: Request, host: Host) -> dict[str, Any]:
    """The shadow's figures: agreement, the disagreement matrix, confidence, review, latency."""
    return await report(host.engine)


def shadow_routes(get_host: Callable[[], Host]) -> list[Route]:
    return [Route("/admin/shadow", guarded(get_host, post), methods=["POST"]),
            Route("/admin/shadow/stop", guarded(get_host, post_stop), methods=["POST"]),
            Route("/admin/shadow", guarded(get_host, get), methods=["GET"])]


async def start(engine: Engine, body: ShadowBody) -> dict[str, Any]:
    scorer = scorer_of(engine)
    if scorer.registry is None:
        raise PistonError("this service has no registry (a pinned bento): nothing to shadow",
                          "conflict")
    spec = await asyncio.to_thread(functools.partial(
        shadow.start, scorer.redis_url, scorer.registry, body.version, body.share,
        body.expected, scorer.limits.ttl_s))
    try:
        await asyncio.to_thread(scorer.sync, engine.follower.status.version)
    except PistonError:
        await asyncio.to_thread(shadow.end, scorer.redis_url, "the candidate did not load",
                                scorer.limits.ttl_s, spec.id)
        raise
    return {"shadow": spec.model_dump(), "loaded": scorer.candidate is not None}


async def stop(engine: Engine, reason: str) -> dict[str, Any]:
    scorer = scorer_of(engine)
    ended = await asyncio.to_thread(shadow.end, scorer.redis_url, reason, scorer.limits.ttl_s)
    await asyncio.to_thread(scorer.sync, engine.follower.status.version)
    return {"ended": ended.model_dump() if ended else None}


async def report(engine: Engine) -> dict[str, Any]:
    scorer = scorer_of(engine)
    found = await asyncio.to_thread(shadow.report, scorer.redis_url, scorer.limits.samples)
    return found.model_dump()


async def shadow_evidence(engine: Engine, version: str) -> str | None:
    """Before a promote: the running shadow's headline when it shadows `version`."""
    scorer = shadow_of(engine)
    if scorer is None:
        return None
    try:
        found = await asyncio.to_thread(shadow.report, scorer.redis_url, 0)
    except LiveStoreUnavailable as err:
        log.warning("no shadow figures for the promote: %s", err)
        return None
    if found.active and found.spec is not None and found.spec.version == version:
        return found.headline
    return None


async def end_shadow(engine: Engine, reason: str) -> None:
    """A promote or rollback ends the shadow (its figures stay readable until they expire)."""
    scorer = shadow_of(engine)
    if scorer is None:
        return
    try:
        await asyncio.to_thread(shadow.end, scorer.redis_url, reason, scorer.limits.ttl_s)
        await asyncio.to_thread(scorer.sync, engine.follower.status.version)
    except PistonError as err:  # the move stands; workers end it when they see production moved
        log.warning("could not end the shadow after the move: %s", err)
