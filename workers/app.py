"""The Celery app, built from the settings at the worker's entry point (nothing at import time)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from piston.errors import PistonError
from piston.jobs import (
    RECORD_TTL_S,
    RETRAIN_QUEUE,
    RETRAIN_TASK,
    ROUTES,
    SCORE_QUEUE,
    SCORE_TASK,
)
from piston.settings import Settings

VISIBILITY_MARGIN_S = 60
QUEUES = (SCORE_QUEUE, RETRAIN_QUEUE)


def create_app(settings: Settings, queues: tuple[str, ...] = QUEUES) -> Celery:
    """Redis broker and backend; settings that lose nothing when a worker or Redis goes away.

    `queues`: what this worker consumes; its visibility timeout is sized for their tasks.
    """
    app = Celery("piston", broker=settings.redis_url, backend=settings.redis_url,
                 include=["workers.tasks"])
    app.conf.update(celery_config(settings, queues))
    app.conf.piston_settings = settings
    return app


def visibility_timeout_s(settings: Settings, queues: tuple[str, ...]) -> int:
    """How long Redis waits before handing an unacknowledged message out again.

    A message can be held (prefetched) for one task's length and then run for another, so
    twice the longest time limit of the queues consumed: a healthy task is never started
    twice, and one lost with its connection comes back after that (the watchdog re-sends
    lost scoring shards sooner).
    """
    limits = {SCORE_QUEUE: settings.score_time_limit_s,
              RETRAIN_QUEUE: settings.retrain_time_limit_s}
    return 2 * max(limits[q] for q in queues) + VISIBILITY_MARGIN_S


def celery_config(settings: Settings, queues: tuple[str, ...] = QUEUES) -> dict[str, Any]:
    score, retrain = settings.score_time_limit_s, settings.retrain_time_limit_s
    # Sends and result writes wait out a Redis outage as long as a running task does.
    retries = int(settings.job_redis_wait_s / 5) + 5
    transport = {"visibility_timeout": visibility_timeout_s(settings, queues),
                 # each set of queues keeps its own unacked messages: a score worker's short
                 # timeout must never hand out a retrain that is still running
                 "unacked_key": f"unacked:{'+'.join(queues)}",
                 "unacked_index_key": f"unacked_index:{'+'.join(queues)}",
                 "unacked_mutex_key": f"unacked_mutex:{'+'.join(queues)}"}
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # A task is acknowledged only once it has finished; if its process dies, the message
        # goes back to the queue instead of being lost (and `_begin` caps how often).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Each process holds the next message while it runs one (multiplier 2): with 1, a
        # process that finished a shard waited for the ack, a fetch from Redis and the
        # hand-off before starting the next, 2-30 ms a shard (docs/benchmarks.md). The
        # visibility timeout above already allows for a message held one task's length.
        "worker_prefetch_multiplier": 2,
        "broker_transport_options": transport,
        "task_publish_retry_policy": {"max_retries": retries, "interval_start": 0,
                                      "interval_step": 1, "interval_max": 5},
        "result_backend_always_retry": True,
        "result_backend_max_retries": retries,
        "result_backend_max_sleep_between_retries_ms": 5000,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_soft_time_limit": int(score * 0.9),
        "task_time_limit": score,
        "task_annotations": {
            RETRAIN_TASK: {"soft_time_limit": int(retrain * 0.95), "time_limit": retrain},
        },
        "task_track_started": True,
        "result_expires": RECORD_TTL_S,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "beat_schedule": beat_schedule(settings),
        "task_routes": ROUTES,
        "task_default_queue": SCORE_QUEUE,
    }


def start_watchdog(settings: Settings) -> None:
    """Run the lost-shard watchdog in this worker's main process once it is ready."""
    def on_ready(**_: Any) -> None:
        from workers import watch

        watch.start(settings)

    worker_ready.connect(on_ready, weak=False)


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
