"""Enqueueing jobs, reading their status and cancelling them, without importing the workers.

The service and the CLI send tasks by name through a send-only Celery client; only worker
processes import `workers`. A job's shared state is its `JobRecord` (`piston.job_record`).
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

from piston.errors import JobQueueUnavailable, UnknownJob
from piston.job_record import (
    ACTIVE,
    RECORD_TTL_S,
    TERMINAL,
    TRANSITIONS,
    JobRecord,
    JobState,
    connection_errors,
    now,
    recent_statuses,
)
from piston.settings import redact

__all__ = ["ACTIVE", "RECORD_TTL_S", "TERMINAL", "TRANSITIONS", "JobQueueUnavailable",
           "JobRecord", "JobState", "UnknownJob", "now"]

SCORE_TASK = "piston.score"
SHARD_TASK = "piston.score_shard"
FINALIZE_TASK = "piston.score_finalize"
RETRAIN_TASK = "piston.retrain"
SCORE_QUEUE, RETRAIN_QUEUE = "score", "retrain"
ROUTES = {SCORE_TASK: {"queue": SCORE_QUEUE}, SHARD_TASK: {"queue": SCORE_QUEUE},
          FINALIZE_TASK: {"queue": SCORE_QUEUE}, RETRAIN_TASK: {"queue": RETRAIN_QUEUE}}



def _reaching_redis(fn: Any) -> Any:
    """Turn connection failures to Redis into a `JobQueueUnavailable` naming the URL."""

    @functools.wraps(fn)
    def call(redis_url: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(redis_url, *args, **kwargs)
        except connection_errors() as err:
            raise JobQueueUnavailable(
                f"cannot reach Redis at {redact(redis_url)} (PISTON_REDIS_URL): {redact(str(err))}"
            ) from None

    return call


@functools.lru_cache(maxsize=8)
def client(redis_url: str) -> Any:
    """A Celery app that only sends tasks and reads results (JSON, like the workers).

    One per URL and process: it keeps its broker connections between calls.
    """
    from celery import Celery

    app = Celery("piston-client", broker=redis_url, backend=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                    task_routes=ROUTES)
    return app


@_reaching_redis
def enqueue_score(redis_url: str, src: str, out: str, only_new: bool = False,
                  explain_flagged: bool = False) -> str:
    """Queue a batch-scoring job of every image under `src` into `out`; returns its job id.

    With `explain_flagged`, each image flagged for review gets its heatmap under
    `out/heatmaps/` (the shards read it from the job's record).
    """
    job_id = str(uuid.uuid4())
    JobRecord.open(redis_url, job_id).create("score", src=src, out=out, only_new=only_new,
                                             explain_flagged=explain_flagged)
    client(redis_url).send_task(
        SCORE_TASK, kwargs={"src": src, "out": out, "only_new": only_new}, task_id=job_id
    )
    return job_id


@_reaching_redis
def enqueue_retrain(
    redis_url: str,
    dataset: str,
    overrides: dict[str, Any] | None = None,
    promote_if_better: bool = False,
    min_accuracy: float | None = None,
    recipe: str | None = None,
) -> str:
    """Queue a retraining job (default recipe unless named); returns its job id."""
    job_id = str(uuid.uuid4())
    JobRecord.open(redis_url, job_id).create("retrain", dataset=dataset)
    client(redis_url).send_task(
        RETRAIN_TASK,
        kwargs={
            "dataset": dataset,
            "overrides": overrides or {},
            "promote_if_better": promote_if_better,
            "min_accuracy": min_accuracy,
            "recipe": recipe,
        },
        task_id=job_id,
    )
    return job_id


@_reaching_redis
def job_status(redis_url: str, job_id: str) -> dict[str, Any]:
    """State and progress (or result, or the reason it failed) of a job.

    Raises `UnknownJob` for an id that no job has, `InvalidName` for a malformed one.
    """
    return JobRecord.open(redis_url, job_id).status()


@_reaching_redis
def wait_ended(redis_url: str, job_id: str, timeout_s: float) -> bool:
    """Block until the job has ended (True) or `timeout_s` passed (False), without polling."""
    return JobRecord.open(redis_url, job_id).wait_ended(timeout_s)


@_reaching_redis
def cancel(redis_url: str, job_id: str) -> dict[str, Any]:
    """Stop a job: queued shards are skipped, running ones stop at their next batch."""
    record = JobRecord.open(redis_url, job_id)
    status = record.status()
    if JobState(status["state"]).ended:
        return status
    record.set_state(JobState.REVOKED, reason="cancelled")
    app = client(redis_url)
    ids = [job_id] + [f"{job_id}-shard-{i}" for i in range(int(status.get("shards") or 0))]
    # A retrain has no safe stopping point but its process: it is terminated.
    app.control.revoke(ids, terminate=status.get("kind") == "retrain", signal="SIGTERM")
    return record.status()


@_reaching_redis
def recent_jobs(redis_url: str, limit: int = 30) -> list[dict[str, Any]]:
    """The newest `limit` jobs' statuses, newest first."""
    return recent_statuses(redis_url, limit)
