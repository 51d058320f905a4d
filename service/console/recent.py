"""Recent jobs for the console, from the job module (read only), and the review lock."""

from __future__ import annotations

import functools
from typing import Any

from piston import jobs
from piston.names import check_job_id


@functools.lru_cache(maxsize=4)
def _redis(redis_url: str) -> Any:
    import redis

    return redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5,
                                socket_connect_timeout=5)


def recent_jobs(redis_url: str, limit: int = 30) -> list[dict[str, Any]]:
    """The newest `limit` jobs' statuses, newest first, each marked ended and succeeded."""
    found = jobs.recent_jobs(redis_url, limit)
    for status in found:
        state = jobs.JobState(status["state"])
        status.update(ended=state.ended, succeeded=state is jobs.JobState.SUCCESS)
    return found


def job_status(redis_url: str, job_id: str) -> dict[str, Any]:
    """One job's status, its id checked before it becomes a Redis key."""
    return dict(jobs.job_status(redis_url, check_job_id(job_id)))


def output_lock(redis_url: str, out_uri: str) -> Any:
    """A lock on one job output across service workers (the URI normalised, as the workers do)."""
    return _redis(redis_url).lock(f"piston:lock:review:{out_uri.rstrip('/')}", timeout=60,
                                  blocking_timeout=60)
