"""The last shard's process merges the job itself; when it cannot, the merge task takes over.

In-process on the real Redis, with a local output: the tasks' own functions, no worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from piston.jobs import JobRecord, JobState
from piston.records import ShardCounts
from piston.settings import Settings
from piston.storage import LocalStorage
from tests.conftest import own_redis
from tests.workers.test_logic import record
from tests.workers.test_watch import queued
from workers import results, tasks
from workers.app import create_app
from workers.runtime import Runtime

URL = own_redis(12)


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    redis.Redis.from_url(URL).flushdb()
    settings = Settings(redis_url=URL, registry=str(tmp_path / "registry"))
    create_app(settings)  # the app the tasks send with
    return Runtime(settings)


def staged_job(rt: Runtime, out: Path) -> JobRecord:
    """A job whose two shards are done and staged under `out`, as the last shard leaves it."""
    job = rt.record("job-last-shard")
    job.create("score", src="/in", out=str(out), only_new=False)
    job.set(shards=2, total=3, model_version="v1")
    job.save_plan([[["a.jpg", "e", 1], ["b.jpg", "e", 1]], [["c.jpg", "e", 1]]])
    assert job.set_state(JobState.STARTED) and job.set_state(JobState.PROGRESS)
    staged = LocalStorage(out)
    for shard, keys in enumerate((["a.jpg", "b.jpg"], ["c.jpg"])):
        mine = [record(k, job=job.job_id) for k in keys]
        staged.write(results.part_key(job.job_id, shard), results.to_jsonl(mine))
        job.shard_done(shard, ShardCounts.of(mine))
    return job


def test_the_last_shard_merges_in_its_own_process(rt: Runtime, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = staged_job(rt, out)
    tasks._finish_here(rt, job)
    assert job.state is JobState.SUCCESS
    assert [r.key for r in results.read_results(LocalStorage(out))] == ["a.jpg", "b.jpg", "c.jpg"]
    assert not list((out / "_parts").rglob("*.jsonl"))  # the staged parts are gone
    assert queued(rt.redis) == []  # no merge task was needed
    tasks._finish_here(rt, job)  # a redelivered last shard: nothing changes, nothing is sent
    assert len(results.read_results(LocalStorage(out))) == 3 and queued(rt.redis) == []


def test_a_merge_that_fails_there_is_handed_to_the_merge_task(rt: Runtime,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = staged_job(rt, out)
    (out / results.RESULTS).mkdir()  # results.jsonl cannot be written: the merge fails
    tasks._finish_here(rt, job)
    assert job.state is JobState.PROGRESS  # not ended, nothing lost: the parts are still there
    assert len(list((out / "_parts").rglob("*.jsonl"))) == 2
    assert queued(rt.redis) == [("piston.score_finalize", {"job_id": job.job_id})]
