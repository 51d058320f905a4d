"""`GET /admin/monitor`: the drift watch's windows and verdicts, per version, for the console."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from piston import drift
from piston.bundle import BundleMeta
from piston.errors import PistonError, RegistryError
from piston.live import connect, reaching
from service.engine import Engine
from service.evidence import drift_of
from service.routes.auth import Host, guarded

CHART_WINDOWS = 24
CHART_DAYS = 7
OTHER_VERSIONS = 3


def monitor(engine: Engine) -> dict[str, Any]:
    """The serving version first, then the versions with the most live images recorded."""
    watch = drift_of(engine)
    if watch is None:
        raise PistonError("this service runs without the drift watch", "conflict")
    serving = engine.follower.current
    registry = engine.follower.registry
    now = time.time()
    with reaching(watch.redis_url, "the drift watch"):
        client = connect(watch.redis_url)
        versions = drift.versions_seen(client)
        wanted = [serving.meta.version] if serving is not None else []
        wanted += [v for v in versions if v not in wanted][:OTHER_VERSIONS]
        out = []
        for version in wanted:
            meta: BundleMeta | None = None
            if serving is not None and version == serving.meta.version:
                meta = serving.meta
            elif registry is not None:
                # gone from the registry: windows without a test split
                with contextlib.suppress(RegistryError):
                    meta = registry.meta(version)
            test = drift.baseline(meta) if meta is not None else drift.Figures()
            out.append(drift.assess(client, version, test, watch.bounds, now,
                                    CHART_WINDOWS, CHART_DAYS).model_dump())
        unversioned = drift.read_windows(client, drift.NO_VERSION, watch.bounds.window_s, 1, now)
    b = watch.bounds
    return {"serving": serving.meta.version if serving is not None else None,
            "drifting": any(v["drifting"] for v in out),
            "bounds": {"window_s": b.window_s, "min_images": b.min_images,
                       "max_class_shift": b.max_class_shift,
                       "max_review_shift": b.max_review_shift,
                       "max_novelty_shift": b.max_novelty_shift},
            "versions": out, "errors_before_a_model": unversioned[0].errors}


async def get(request: Request, host: Host) -> dict[str, Any]:
    """Drift watch: per version, short and day windows against its test split; verdicts."""
    return await asyncio.to_thread(monitor, host.engine)


def monitor_routes(get_host: Callable[[], Host]) -> list[Route]:
    return [Route("/admin/monitor", guarded(get_host, get), methods=["GET"])]
