"""Enqueueing jobs, reading their status and cancelling them, without importing the workers.

The service and the CLI send tasks by name through a send-only Celery client; only worker
processes import `workers`. A scoring job is split into shards run by many workers, so its
progress lives in one Redis hash (`JobRecord`) that every shard updates idempotently: each
shard overwrites its own fields, so a shard delivered twice never counts twice.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid
from typing import Any

from piston.errors import JobQueueUnavailable, UnknownJob

SCORE_TASK = "piston.score"
SHARD_TASK = "piston.score_shard"
FINALIZE_TASK = "piston.score_finalize"
RETRAIN_TASK = "piston.retrain"
TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
RECORD_TTL_S = 7 * 24 * 3600


# KEYS[1] = the job hash; ARGV[1..3] = the terminal states (JSON); then field, value pairs.
_SET_STATE_UNLESS_ENDED = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == ARGV[1] or state == ARGV[2] or state == ARGV[3] then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def _reaching_redis(fn: Any) -> Any:
    """Turn connection failures to Redis into a `JobQueueUnavailable` naming the URL."""

    @functools.wraps(fn)
    def call(redis_url: str, *args: Any, **kwargs: Any) -> Any:
        from kombu.exceptions import OperationalError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return fn(redis_url, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OperationalError) as err:
            raise JobQueueUnavailable(
                f"cannot reach Redis at {redis_url} (PISTON_REDIS_URL): {err}"
            ) from None

    return call


@functools.lru_cache(maxsize=8)
def client(redis_url: str) -> Any:
    """A Celery app that only sends tasks and reads results (JSON, like the workers).

    One per URL and process: it keeps its broker connections between calls.
    """
    from celery import Celery

    app = Celery("piston-client", broker=redis_url, backend=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return app


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class JobRecord:
    """One job's shared state in Redis: plan, per-shard progress, state and summary."""

    def __init__(self, redis: Any, job_id: str) -> None:
        self.redis = redis
        self.job_id = job_id
        self.key = f"piston:job:{job_id}"

    @classmethod
    def open(cls, redis_url: str, job_id: str) -> JobRecord:
        return cls(_redis(redis_url), job_id)

    def create(self, kind: str, **fields: Any) -> None:
        values = {"kind": kind, "state": "PENDING", "submitted_at": now(), **fields}
        pipe = self.redis.pipeline()
        pipe.hset(self.key, mapping={k: json.dumps(v) for k, v in values.items()})
        pipe.expire(self.key, RECORD_TTL_S)
        pipe.execute()

    def exists(self) -> bool:
        return bool(self.redis.exists(self.key))

    def set(self, **fields: Any) -> None:
        self.redis.hset(self.key, mapping={k: json.dumps(v) for k, v in fields.items()})

    def get(self, name: str, default: Any = None) -> Any:
        raw = self.redis.hget(self.key, name)
        return default if raw is None else _loads(raw)

    @property
    def state(self) -> str:
        return str(self.get("state", "PENDING"))

    def set_state(self, state: str, reason: str | None = None) -> bool:
        """Move to `state` unless the job already ended; False when it had.

        Check and write are one Redis script, so a cancel racing the final merge cannot
        overwrite SUCCESS with REVOKED.
        """
        fields: dict[str, Any] = {"state": state}
        if state in TERMINAL:
            fields["finished_at"] = now()
        if reason:
            fields["reason"] = reason
        args = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        terminal = [json.dumps(t) for t in sorted(TERMINAL)]
        if not self.redis.eval(_SET_STATE_UNLESS_ENDED, 1, self.key, *terminal, *args):
            return False
        if state in TERMINAL:
            self._release()
        return True

    def claim(self, resource: str, ttl_s: int) -> str | None:
        """Hold `resource` for this job until it ends; the holder's job id when another has it."""
        guard = f"piston:claim:{resource}"
        if self.redis.set(guard, self.job_id, nx=True, ex=ttl_s):
            self.set(claim=guard)
            return None
        holder = self.redis.get(guard)
        return None if holder == self.job_id else str(holder)

    def _release(self) -> None:
        guard = self.get("claim")
        if guard and self.redis.get(guard) == self.job_id:
            self.redis.delete(guard)

    def progress(self, shard: int, counts: dict[str, Any]) -> None:
        """Overwrite one shard's running counts (so a redelivered shard restarts them)."""
        self.set(**{f"progress:{shard}": counts})

    def shard_done(self, shard: int, counts: dict[str, Any]) -> bool:
        """Record a finished shard; True once every shard is done.

        A redelivered last shard (its worker died before sending the merge) answers True
        again, so the merge is still sent; merging is idempotent.
        """
        done_key = f"{self.key}:done"
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key, f"progress:{shard}", json.dumps(counts))
        pipe.sadd(done_key, shard)
        pipe.scard(done_key)
        pipe.expire(done_key, RECORD_TTL_S)
        _, _, done, _ = pipe.execute()
        return int(done) == int(self.get("shards", 0))

    def status(self) -> dict[str, Any]:
        """Everything known about the job, with counts summed over its shards."""
        raw = self.redis.hgetall(self.key)
        if not raw:
            raise UnknownJob(f"no job {self.job_id} (unknown id, or its record expired)")
        fields = {k: _loads(v) for k, v in raw.items()}
        shards = [v for k, v in fields.items() if k.startswith("progress:")]
        out: dict[str, Any] = {"job_id": self.job_id}
        internal = ("progress:", "summary", "started_ts")
        out.update({k: v for k, v in fields.items() if not k.startswith(internal)})
        if fields.get("kind") == "score" and "summary" not in fields:
            by_label: dict[str, int] = {}
            for counts in shards:
                for label, n in counts.get("by_label", {}).items():
                    by_label[label] = by_label.get(label, 0) + int(n)
            out.update(
                scored=sum(int(c.get("scored", 0)) for c in shards),
                errors=sum(int(c.get("errors", 0)) for c in shards),
                needs_review=sum(int(c.get("needs_review", 0)) for c in shards),
                by_label=by_label,
                shards_done=int(self.redis.scard(f"{self.key}:done")),
            )
        elif "summary" in fields:
            out.update(fields["summary"])
        return out


@functools.lru_cache(maxsize=8)
def _redis(redis_url: str) -> Any:
    """One client (with its connection pool) per URL and process."""
    import redis

    return redis.Redis.from_url(redis_url, decode_responses=True)


def _loads(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@_reaching_redis
def enqueue_score(redis_url: str, src: str, out: str, only_new: bool = False) -> str:
    """Queue a batch-scoring job of every image under `src` into `out`; returns its job id."""
    job_id = str(uuid.uuid4())
    JobRecord.open(redis_url, job_id).create("score", src=src, out=out)
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

    Raises `UnknownJob` for an id that no job has.
    """
    return JobRecord.open(redis_url, job_id).status()


@_reaching_redis
def cancel(redis_url: str, job_id: str) -> dict[str, Any]:
    """Stop a job: queued shards are skipped, running ones stop at their next batch."""
    record = JobRecord.open(redis_url, job_id)
    status = record.status()
    if status.get("state") in TERMINAL:
        return status
    record.set_state("REVOKED", reason="cancelled")
    app = client(redis_url)
    ids = [job_id] + [f"{job_id}-shard-{i}" for i in range(int(status.get("shards") or 0))]
    # A retrain has no safe stopping point but its process: it is terminated.
    app.control.revoke(ids, terminate=status.get("kind") == "retrain", signal="SIGTERM")
    return record.status()
