"""The Celery app, built from the settings at the worker's entry point (nothing at import time)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from celery import Celery

from piston.errors import PistonError
from piston.jobs import FINALIZE_TASK, RETRAIN_TASK, SCORE_TASK, SHARD_TASK
from piston.settings import Settings

VISIBILITY_MARGIN_S = 600


def create_app(settings: Settings) -> Celery:
    """Redis broker and backend; settings that lose nothing when a worker process dies."""
    app = Celery("piston", broker=settings.redis_url, backend=settings.redis_url,
                 include=["workers.tasks"])
    app.conf.update(celery_config(settings))
    app.conf.piston_settings = settings
    return app


def celery_config(settings: Settings) -> dict[str, Any]:
    score, retrain = settings.score_time_limit_s, settings.retrain_time_limit_s
    longest = max(score, retrain)
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # A task is acknowledged only once it has finished; if its process dies, the message
        # goes back to the queue instead of being lost.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Redis re-delivers an unacknowledged message after this long: it must exceed the
        # longest task, or a healthy long retrain would be started a second time.
        "broker_transport_options": {"visibility_timeout": longest + VISIBILITY_MARGIN_S},
        "result_backend_transport_options": {"visibility_timeout": longest + VISIBILITY_MARGIN_S},
        "task_soft_time_limit": int(score * 0.9),
        "task_time_limit": score,
        "task_annotations": {
            RETRAIN_TASK: {"soft_time_limit": int(retrain * 0.95), "time_limit": retrain},
        },
        "task_track_started": True,
        "result_expires": 7 * 24 * 3600,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "beat_schedule": beat_schedule(settings),
        "task_routes": {SCORE_TASK: {"queue": "celery"}, SHARD_TASK: {"queue": "celery"},
                        FINALIZE_TASK: {"queue": "celery"}, RETRAIN_TASK: {"queue": "celery"}},
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """One periodic scoring job per configured prefix, scoring only objects not seen before."""
    return {
        f"score {src} -> {out}": {
            "task": SCORE_TASK,
            "schedule": settings.score_schedule_every_s,
            "kwargs": {"src": src, "out": out, "only_new": True},
        }
        for src, out in sorted(settings.score_schedule.items())
    }


BEAT_LOCK = "piston:beat"
BEAT_LOCK_TTL_S = 30


@contextlib.contextmanager
def single_beat(redis_url: str) -> Iterator[None]:
    """Hold the one beat slot while beat runs: a second beat refuses to start.

    The slot expires BEAT_LOCK_TTL_S after its holder stops refreshing it (a crashed beat).
    """
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    me = f"{socket.gethostname()}:{os.getpid()}"
    if not client.set(BEAT_LOCK, me, nx=True, ex=BEAT_LOCK_TTL_S):
        holder = str(client.get(BEAT_LOCK))
        raise PistonError(f"another beat is running ({holder}): run exactly one")
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(BEAT_LOCK_TTL_S / 3):
            if client.get(BEAT_LOCK) == me:
                client.expire(BEAT_LOCK, BEAT_LOCK_TTL_S)

    threading.Thread(target=refresh, name="beat-lock", daemon=True).start()
    try:
        yield
    finally:
        stop.set()
        if client.get(BEAT_LOCK) == me:
            client.delete(BEAT_LOCK)
