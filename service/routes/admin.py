"""The admin routes: bundles, history, promote, roll back, reload (behind the admin token)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from starlette.requests import Request
from starlette.routing import Route

from piston.registry import Registry
from service.routes.auth import Host, guarded, registry_of
from service.routes.shadow import end_shadow, shadow_evidence
from service.schemas import (
    BundleRow,
    HistoryAnswer,
    ModelsAnswer,
    MoveAnswer,
    PromoteBody,
    ReloadAnswer,
    RollbackBody,
)


def bundle_rows(registry: Registry) -> list[BundleRow]:
    """Every bundle, oldest first: summary, gates, headline metrics, production marked."""
    current = registry.current()
    rows = []
    for version in registry.versions():
        meta = registry.meta(version)
        rows.append(BundleRow(**meta.summary(), production=version == current,
                              gates=meta.gates, metrics=meta.metrics.headline()))
    return rows


async def models(request: Request, host: Host) -> ModelsAnswer:
    """Every bundle (oldest first) with gates, headline metrics, `production` marked."""
    engine = host.engine
    rows = await asyncio.to_thread(bundle_rows, registry_of(engine))
    current = next((r.version for r in rows if r.production), None)
    return ModelsAnswer(production=current, serving=engine.follower.status.version,
                        bundles=rows)


async def history(request: Request, host: Host) -> HistoryAnswer:
    """Every promote and rollback, oldest first, and the version now in production."""
    moves = await asyncio.to_thread(registry_of(host.engine).history)
    return HistoryAnswer(production=moves[-1].version if moves else None, moves=moves)


async def promote(request: Request, host: Host, body: PromoteBody) -> MoveAnswer:
    """Put a bundle in production (as `piston models promote`); this worker swaps at once."""
    engine = host.engine
    evidence = await shadow_evidence(engine, body.version)
    move = await asyncio.to_thread(
        functools.partial(registry_of(engine).promote, body.version, body.reason,
                          by="admin-api", force=body.force, expected=body.expected))
    # End the shadow before loading the new bundle: a worker that loads it first would end it
    # as "production moved" (loading takes far longer than this one Redis call).
    await end_shadow(engine, f"promoted {move.version}")
    await asyncio.to_thread(engine.refresh)
    return MoveAnswer(move=move, serving=engine.follower.status.version, shadow=evidence)


async def rollback(request: Request, host: Host, body: RollbackBody) -> MoveAnswer:
    """Return production to the previous bundle, or to `to` (as `piston models rollback`)."""
    engine = host.engine
    move = await asyncio.to_thread(
        functools.partial(registry_of(engine).rollback, body.reason, to=body.to,
                          by="admin-api", expected=body.expected))
    await end_shadow(engine, f"rolled back to {move.version}")  # first: see promote
    await asyncio.to_thread(engine.refresh)
    return MoveAnswer(move=move, serving=engine.follower.status.version)


async def reload(request: Request, host: Host) -> ReloadAnswer:
    """Re-read the production pointer now instead of at the next poll."""
    engine = host.engine
    swapped = await asyncio.to_thread(engine.refresh)
    return ReloadAnswer(swapped=swapped, serving=engine.follower.status.version,
                        last_error=engine.follower.status.last_error)


def admin_routes(get_host: Callable[[], Host]) -> list[Route]:
    return [Route("/admin/models", guarded(get_host, models), methods=["GET"]),
            Route("/admin/history", guarded(get_host, history), methods=["GET"]),
            Route("/admin/promote", guarded(get_host, promote), methods=["POST"]),
            Route("/admin/rollback", guarded(get_host, rollback), methods=["POST"]),
            Route("/admin/reload", guarded(get_host, reload), methods=["POST"])]
