"""Recent jobs, read from their records in Redis (read only).

`piston.jobs` has no listing yet; a job record is the hash `piston:job:<uuid>`, kept for a
week, so a SCAN over that pattern finds every job still worth showing.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from piston import jobs
from piston.errors import JobQueueUnavailable, UnknownJob
from piston.names import JOB_ID_RE, check_job_id

_RECORD = re.compile(rf"piston:job:({JOB_ID_RE.pattern})")  # not its `:done` or `:workers`


@functools.lru_cache(maxsize=4)
def _redis(redis_url: str) -> Any:
    import redis

    return redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5,
                                socket_connect_timeout=5)


def recent_jobs(redis_url: str, limit: int = 30) -> list[dict[str, Any]]:
    """The newest `limit` jobs' statuses, newest first (only those are read whole)."""
    import redis

    try:
        client = _redis(redis_url)
        ids = [m.group(1) for key in client.scan_iter(match="piston:job:*", count=500)
               if (m := _RECORD.fullmatch(key))]
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(f"piston:job:{job_id}", "submitted_at")
        submitted = dict(zip(ids, pipe.execute(), strict=True))
        newest = sorted(ids, key=lambda i: submitted[i] or "", reverse=True)[:limit]
        found = []
        for job_id in newest:
            try:
                found.append(jobs.JobRecord(client, job_id).status())
            except UnknownJob:
                continue  # expired between the scan and the read
    except (redis.ConnectionError, redis.TimeoutError) as err:
        raise JobQueueUnavailable(  # no URL in the message: it may hold a password
            f"cannot reach Redis (PISTON_REDIS_URL): {type(err).__name__}") from None
    return found


def job_status(redis_url: str, job_id: str) -> dict[str, Any]:
    """One job's status, its id checked before it becomes a Redis key."""
    return dict(jobs.job_status(redis_url, check_job_id(job_id)))


def output_lock(redis_url: str, out_uri: str) -> Any:
    """A lock on one job output across service workers (the URI normalised, as the workers do)."""
    return _redis(redis_url).lock(f"piston:lock:review:{out_uri.rstrip('/')}", timeout=60,
                                  blocking_timeout=60)
