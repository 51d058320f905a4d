"""The S3 server stops in the middle of a job: retries, then a failed job with a reason, and
nothing half-written. Its own S3 server, Redis database and worker, so nothing else is hit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from piston.jobs import TERMINAL, enqueue_score, job_status
from piston.registry import Registry
from piston.storage import LocalStorage
from tests.conftest import own_redis
from tests.workers.conftest import (
    MotoServer,
    start_worker,
    upload_pistons,
    worker_env,
)

pytestmark = pytest.mark.slow
OWN_REDIS = own_redis(12)


def test_s3_stopping_mid_job_fails_it_with_a_reason_and_writes_no_results(
    work_dir: Path, bundles: dict[str, str], piston_data: Path, aws_env: None
) -> None:
    redis.Redis.from_url(OWN_REDIS).flushdb()
    doomed = MotoServer(work_dir).start()
    registry_dir = work_dir / "local-registry"
    registry = Registry(LocalStorage(registry_dir))
    registry.publish(bundles["good"])  # from this process's model store
    registry.promote(bundles["good"], "tests", force=True)
    worker = None
    try:
        upload_pistons(doomed.client(), piston_data, "doomed", "batch")
        env = worker_env(work_dir, doomed.url, str(registry_dir), PISTON_REDIS_URL=OWN_REDIS,
                         PISTON_SCORE_MAX_IMAGES_PER_SECOND="40")
        worker = start_worker(env, work_dir / "doomed-worker.log", concurrency=1, name="doomed")
        out = work_dir / "doomed-results"
        job_id = enqueue_score(OWN_REDIS, "s3://doomed/batch", str(out))
        deadline = time.monotonic() + 60
        while job_status(OWN_REDIS, job_id).get("scored", 0) == 0:
            assert time.monotonic() < deadline, job_status(OWN_REDIS, job_id)
            time.sleep(0.02)
        doomed.stop()
        seen: list[dict[str, Any]] = []
        while (status := job_status(OWN_REDIS, job_id))["state"] not in TERMINAL:
            seen.append(status)
            assert time.monotonic() < deadline + 60, status
            time.sleep(0.05)
    finally:
        doomed.stop()
        if worker:
            worker.stop()

    assert status["state"] == "FAILURE"
    assert "cannot reach S3 at http://127.0.0.1" in status["reason"]
    assert status["reason"].endswith("(gave up after 2 retries)")
    assert any(s.get("retries") for s in seen), "no retry was recorded"
    # nothing half-written: no results, and the finished shards' staged parts are removed
    written = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] \
        if out.exists() else []
    assert written == []
