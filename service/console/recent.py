"""Recent jobs, read from their records in Redis (read only).

`piston.jobs` has no listing yet; a job record is the hash `piston:job:<uuid>`, kept for a
week, so a SCAN over that pattern finds every job still worth showing.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from piston import jobs

_RECORD = re.compile(r"piston:job:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@functools.lru_cache(maxsize=4)
def _redis(redis_url: str) -> Any:
    import redis

    return redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5,
                                socket_connect_timeout=5)


def recent_jobs(redis_url: str, limit: int = 30) -> list[dict[str, Any]]:
    """The newest `limit` jobs' statuses, newest first."""
    import redis

    try:
        client = _redis(redis_url)
        ids = [m.group(1) for key in client.scan_iter(match="piston:job:*", count=500)
               if (m := _RECORD.fullmatch(key))]
        found = []
        for job_id in ids:
            try:
                found.append(jobs.JobRecord(client, job_id).status())
            except jobs.UnknownJob:
                continue  # expired between the scan and the read
    except (redis.ConnectionError, redis.TimeoutError) as err:
        raise jobs.JobQueueUnavailable(  # no URL in the message: it may hold a password
            f"cannot reach Redis (PISTON_REDIS_URL): {type(err).__name__}") from None
    found.sort(key=lambda s: str(s.get("submitted_at", "")), reverse=True)
    return found[:limit]


def job_status(redis_url: str, job_id: str) -> dict[str, Any]:
    """One job's status; `UnknownJob` for an id that is not a job id at all."""
    if not JOB_ID.fullmatch(job_id):
        raise jobs.UnknownJob(f"{job_id!r} is not a job id")
    return dict(jobs.job_status(redis_url, job_id))


def output_lock(redis_url: str, out_uri: str) -> Any:
    """A lock on one job output across service workers (the URI normalised, as the workers do)."""
    return _redis(redis_url).lock(f"piston:lock:review:{out_uri.rstrip('/')}", timeout=60,
                                  blocking_timeout=60)
