"""What a worker process holds between tasks: settings, registry, Redis and the model.

Created lazily on the first task of each process (after the fork), so the model is loaded
once per worker process and follows the registry's `production` pointer, as the service does.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from typing import Any

from piston.bundle import Predictor
from piston.errors import PistonError
from piston.follow import ModelFollower
from piston.jobs import JobRecord
from piston.registry import open_registry
from piston.settings import Settings
from piston.storage import Storage, open_storage

log = logging.getLogger(__name__)
_RUNTIME: Runtime | None = None
_RUNTIME_PID = 0
_LOCK = threading.Lock()


class Runtime:
    def __init__(self, settings: Settings, threads: int | None = None) -> None:
        import redis

        self.threads = threads or 1  # intra-op threads of the model, in either runtime
        self.settings = settings
        self.registry = open_registry(settings)
        self.follower = ModelFollower(self.registry, runtime=settings.runtime,
                                      threads=self.threads)
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True,
                                          socket_connect_timeout=5, socket_timeout=30)
        self._pinned: dict[str, Predictor] = {}

    def storage(self, location: str) -> Storage:
        return open_storage(location, self.settings.s3_endpoint_url)

    def record(self, job_id: str) -> JobRecord:
        """The job's record; its calls wait out a Redis outage (`job_redis_wait_s`)."""
        return JobRecord(self.redis, job_id, wait_s=self.settings.job_redis_wait_s)

    def production(self) -> Predictor:
        """The production model, swapping in a newer one when the pointer has moved."""
        if self.registry.current() is None:  # raises StorageUnavailable when the store is down
            raise PistonError("nothing is in production: promote a bundle first")
        if self.follower.refresh():
            settle_heap()
        predictor = self.follower.current
        if predictor is None:
            why = self.follower.status.last_error
            raise PistonError(f"the production bundle cannot be loaded: {why}")
        return predictor

    def predictor(self, version: str) -> Predictor:
        """The model of `version`: the production one, or a pinned copy while a job finishes.

        A process whose first task is a shard loads production first: loading `version` as
        a pinned copy would load the same model again at its first plan.
        """
        if self.follower.current is None and self.follower.refresh():
            settle_heap()
        current = self.follower.current
        if current is not None and current.meta.version == version:
            return current
        if version not in self._pinned:
            self._pinned = {version: Predictor.load(self.registry.fetch(version),
                                                    self.settings.runtime, self.threads)}
            settle_heap()
        return self._pinned[version]


def settle_heap() -> None:
    """Move what the process holds now (modules, the model) out of the garbage collector's view.

    A full collection walks every object the process holds: in a scoring process that is
    ~150 ms (measured, docs/benchmarks.md), once every job or so, and it fell in a job's
    serial steps (the plan, the merge) while the other processes waited. Frozen objects are
    never walked again; unfreezing first lets a model swapped out be collected.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def runtime(app: Any) -> Runtime:
    """This process's runtime, built from the settings the Celery `app` was created with."""
    global _RUNTIME, _RUNTIME_PID
    with _LOCK:
        if _RUNTIME is None or os.getpid() != _RUNTIME_PID:
            _RUNTIME = Runtime(app.conf.piston_settings, app.conf.get("piston_threads"))
            _RUNTIME_PID = os.getpid()
        return _RUNTIME
