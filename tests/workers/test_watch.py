"""The watchdog on the real Redis, in-process: what a quiet job gets re-sent, and when."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import redis

from piston.jobs import ACTIVE, SCORE_QUEUE, JobRecord, JobState
from piston.records import ShardCounts
from piston.settings import Settings
from tests.conftest import own_redis
from workers.app import create_app
from workers.watch import SWEEP_LOCK, Watchdog

URL = own_redis(12)


@pytest.fixture
def watchdog() -> Watchdog:
    client = redis.Redis.from_url(URL, decode_responses=True)
    client.flushdb()
    settings = Settings(redis_url=URL, job_stale_after_s=30, job_watch_every_s=1)
    create_app(settings)  # the app the tasks send with (as in a worker's main process)
    return Watchdog(settings, client)


def queued(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """(task name, kwargs) of every message waiting in the score queue."""
    out = []
    for raw in client.lrange(SCORE_QUEUE, 0, -1):
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], kwargs))
    return out


PATH = {JobState.PENDING: [], JobState.PROGRESS: [JobState.STARTED, JobState.PROGRESS],
        JobState.SUCCESS: [JobState.STARTED, JobState.PROGRESS, JobState.SUCCESS]}


def a_job(watchdog: Watchdog, state: JobState, shards: int, done: set[int], quiet_s: float,
          ) -> JobRecord:
    record = JobRecord(watchdog.redis, f"job-{state.lower()}-{len(done)}")
    record.create("score", src="/in", out="/out", only_new=False)
    record.set(shards=shards, model_version="v1")
    record.save_plan([[[f"k{i}", "e", 1]] for i in range(shards)])
    for shard in done:
        record.shard_done(shard, ShardCounts(done=1, scored=1))
    for step in PATH[state]:
        assert record.set_state(step)
    if watchdog.redis.zscore(ACTIVE, record.job_id) is not None:  # still running: make it quiet
        watchdog.redis.zadd(ACTIVE, {record.job_id: time.time() - quiet_s})
    return record


def test_a_quiet_job_gets_its_missing_shards_and_nothing_else(watchdog: Watchdog) -> None:
    stalled = a_job(watchdog, JobState.PROGRESS, shards=3, done={1}, quiet_s=60)
    a_job(watchdog, JobState.PROGRESS, shards=3, done=set(), quiet_s=5)  # busy, not lost
    merged = a_job(watchdog, JobState.PROGRESS, shards=2, done={0, 1}, quiet_s=60)
    actions = watchdog.sweep()
    assert sorted(actions) == sorted([f"job {stalled.job_id}: shards [0, 2] re-sent",
                                      f"job {merged.job_id}: merge re-sent"])
    sent = queued(watchdog.redis)
    shards = sorted((k["job_id"], k["shard"], k["items"][0][0]) for t, k in sent
                    if t == "piston.score_shard")
    assert shards == [(stalled.job_id, 0, "k0"), (stalled.job_id, 2, "k2")]
    assert [k for t, k in sent if t == "piston.score_finalize"] == [{"job_id": merged.job_id}]
    # one sweep at a time, and a revived job is left alone for another stale period
    assert watchdog.sweep() == []
    watchdog.redis.delete(SWEEP_LOCK, SCORE_QUEUE)
    assert watchdog.sweep() == []


def test_nothing_is_re_sent_while_work_is_queued(watchdog: Watchdog) -> None:
    a_job(watchdog, JobState.PROGRESS, shards=2, done=set(), quiet_s=60)
    watchdog.redis.rpush(SCORE_QUEUE, "{}")  # a message still waiting for a worker
    assert watchdog.sweep() == []


def test_a_lost_plan_is_re_sent_and_ended_jobs_are_forgotten(watchdog: Watchdog) -> None:
    pending = a_job(watchdog, JobState.PENDING, shards=0, done=set(), quiet_s=60)
    ended = a_job(watchdog, JobState.SUCCESS, shards=0, done=set(), quiet_s=60)
    assert watchdog.redis.zscore(ACTIVE, ended.job_id) is None  # ending leaves the set
    assert watchdog.sweep() == [f"job {pending.job_id}: plan re-sent (PENDING)"]
    [(name, kwargs)] = queued(watchdog.redis)
    assert name == "piston.score" and kwargs["job_id"] == pending.job_id
