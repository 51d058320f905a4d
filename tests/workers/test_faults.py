"""Infrastructure faults on real parts: Redis restarting mid-job, a task that kills its worker.

Both use the session's worker; the worker tests' Redis is their own `redis-server` (AOF on,
as the compose stack runs it), so restarting it disturbs nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import redis

from piston.errors import JobQueueUnavailable
from piston.jobs import TERMINAL, enqueue_score, job_status
from piston.jobs import client as client_app
from tests.workers.conftest import REDIS_URL, RedisServer, Worker

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)


def many_pistons(piston_data: Path, dest: Path, copies: int) -> list[str]:
    """The real images, `copies` times over under different names: a longer job."""
    keys = []
    for n in range(copies):
        for path in sorted(piston_data.glob("*/*.jpeg")):
            key = f"copy{n}/{path.parent.name}/{path.name}"
            (dest / key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / key)
            keys.append(key)
    return keys


def status_when_reachable(url: str, job_id: str) -> dict[str, object] | None:
    try:
        return job_status(url, job_id)
    except JobQueueUnavailable:
        return None


def test_a_redis_restart_mid_job_is_waited_out(
    worker: Worker, redis_server: RedisServer, piston_data: Path, work_dir: Path
) -> None:
    """The session's Redis (AOF on) is stopped mid-job for 4 s and started again."""
    src, out = work_dir / "restart-src", work_dir / "restart-out"
    keys = many_pistons(piston_data, src, copies=2)
    job_id = enqueue_score(REDIS_URL, str(src), str(out))
    deadline = time.monotonic() + 90
    while (job_status(REDIS_URL, job_id).get("scored") or 0) < 32:
        assert time.monotonic() < deadline, job_status(REDIS_URL, job_id)
        time.sleep(0.1)
    redis_server.stop()
    time.sleep(4)  # the outage the issue measured: Redis down for 4 s
    redis_server.start()
    back = time.monotonic()
    while (status := status_when_reachable(REDIS_URL, job_id)) is None or \
            status["state"] not in TERMINAL:
        assert time.monotonic() - back < 120, status
        time.sleep(0.2)
    took = time.monotonic() - back

    assert status["state"] == "SUCCESS", status
    assert took < 120
    lines = (out / "results.jsonl").read_text().splitlines()
    scored = [json.loads(line)["key"] for line in lines]
    assert sorted(scored) == sorted(keys)  # every image exactly once
    assert status["scored"] == len(keys) - status["errors"]  # type: ignore[operator]
    worker_log = worker.log.read_text()
    assert "job " + job_id + " failed" not in worker_log  # the outage never failed the job
    log.info("Redis back -> job SUCCESS in %.1f s; watchdog: %s", took,
             [line for line in worker_log.splitlines() if "watchdog:" in line])


def test_a_task_that_kills_its_worker_every_time_is_dead_lettered(
    worker: Worker, piston_data: Path, work_dir: Path
) -> None:
    """The session's worker runs with PISTON_JOB_MAX_WORKER_LOST=1: two deaths, then FAILURE."""
    src = work_dir / "poison-src"
    many_pistons(piston_data, src, copies=1)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    killed: set[int] = set()
    job_id = enqueue_score(REDIS_URL, str(src), str(work_dir / "poison-out"))
    deadline = time.monotonic() + 180
    while (status := job_status(REDIS_URL, job_id))["state"] not in TERMINAL:
        assert time.monotonic() < deadline, status
        where = client.hget(f"piston:job:{job_id}", "worker:0")
        pid = int(json.loads(where).rsplit(":", 1)[1]) if where else 0
        if pid and pid not in killed and pid in worker.children():
            os.kill(pid, signal.SIGKILL)  # the shard's process dies each time it runs it
            killed.add(pid)
        time.sleep(0.05)

    assert status["state"] == "FAILURE", status
    assert "shard-0 was dead-lettered: its worker process died 2 times" in str(status["reason"])
    assert len(killed) == 2
    assert not (work_dir / "poison-out" / "results.jsonl").exists()
    # in Celery too, the dead-lettered shard ended as failed, not as a success
    result = client_app(REDIS_URL).AsyncResult(f"{job_id}-shard-0")
    deadline = time.monotonic() + 30
    while result.state != "FAILURE":
        assert time.monotonic() < deadline, result.state
        time.sleep(0.2)
