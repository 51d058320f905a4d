"""One job's shared state in Redis: its states, and the `JobRecord`, which owns every key a
job creates (no other module names a job key).

Each key has an expiry. Shards update the record idempotently: each overwrites its own
fields, so a shard delivered twice never counts twice.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from piston.errors import UnknownJob
from piston.names import JOB_ID_RE, check_job_id
from piston.records import JobSummary, ShardCounts
from piston.settings import redact

log = logging.getLogger(__name__)
T = TypeVar("T")



class JobState(StrEnum):
    """A job's state (Celery's names, so its tools read them); `TRANSITIONS` says the moves."""

    PENDING = "PENDING"  # queued, no worker has it yet
    STARTED = "STARTED"  # a worker plans the scoring job, or runs the retrain
    PROGRESS = "PROGRESS"  # a scoring job's shards are out
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"  # cancelled

    @property
    def ended(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCESS, JobState.FAILURE, JobState.REVOKED})
# Where each state may go. STARTED -> STARTED is a redelivered task starting again; a job that
# ended stays ended (a cancel racing the final merge cannot overwrite SUCCESS).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.STARTED, JobState.FAILURE, JobState.REVOKED}),
    JobState.STARTED: frozenset({JobState.STARTED, JobState.PROGRESS, *TERMINAL}),
    JobState.PROGRESS: TERMINAL,
    **{ended: frozenset() for ended in TERMINAL},
}
RECORD_TTL_S = 7 * 24 * 3600
ACTIVE = "piston:jobs:active"  # job id -> last update (unix time): what the watchdog looks at
_PREFIX = "piston:job:"
_RECORD_KEY = re.compile(rf"{_PREFIX}({JOB_ID_RE.pattern})")  # not its `:done` or `:plan`

# KEYS[1] = the job hash; ARGV[1] = n, ARGV[2..n+1] = the states it may move from (JSON);
# then field, value pairs. Check and write in one script, so no other move slips in between.
_SET_STATE_IF_ALLOWED = """
local state = redis.call('HGET', KEYS[1], 'state')
local n = tonumber(ARGV[1])
local allowed = false
for i = 2, n + 1 do if state == ARGV[i] then allowed = true end end
if not allowed then return 0 end
for i = n + 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def may_move(source: JobState, target: JobState) -> bool:
    return target in TRANSITIONS[source]


def connection_errors() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError
    from redis.exceptions import BusyLoadingError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return RedisConnectionError, RedisTimeoutError, BusyLoadingError, OperationalError


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class JobRecord:
    """One job's shared state in Redis: plan, per-shard progress, state and summary.

    Keys: `piston:job:<id>` (hash), `...:done` (set of finished shards), `...:plan` (each
    shard's items, to re-send a lost one), `...:ended` (what `wait_ended` blocks on) and the
    job's entry in `piston:jobs:active` while it runs. With `wait_s`, every call waits out a
    Redis outage (retrying with backoff) instead of failing: what a worker mid-job wants.
    """

    def __init__(self, redis: Any, job_id: str, wait_s: float = 0.0,
                 ttl_s: int = RECORD_TTL_S) -> None:
        self.redis = redis
        self.job_id = check_job_id(job_id)
        self.key = f"{_PREFIX}{job_id}"
        self.done_key = f"{self.key}:done"
        self.plan_key = f"{self.key}:plan"
        self.ended_key = f"{self.key}:ended"  # a list, non-empty once the job has ended
        self.wait_s = wait_s
        self.ttl_s = ttl_s

    @classmethod
    def open(cls, redis_url: str, job_id: str) -> JobRecord:
        return cls(_redis(redis_url), job_id)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args)`, retried while Redis is unreachable, for up to `wait_s` seconds."""
        deadline = time.monotonic() + self.wait_s
        delay = 0.25
        while True:
            try:
                return fn(*args, **kwargs)
            except connection_errors() as err:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("job %s: Redis unreachable (%s); retrying in %.1f s", self.job_id,
                            redact(str(err)), delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _pipeline(self, build: Callable[[Any], None]) -> list[Any]:
        def run() -> list[Any]:
            pipe = self.redis.pipeline(transaction=True)
            build(pipe)
            return list(pipe.execute())
        return self._call(run)

    def create(self, kind: str, **fields: Any) -> None:
        values = {"kind": kind, "state": JobState.PENDING, "submitted_at": now(), **fields}

        def build(pipe: Any) -> None:
            pipe.hset(self.key, mapping={k: json.dumps(v) for k, v in values.items()})
            pipe.expire(self.key, self.ttl_s)
        self._pipeline(build)
        self.touch()

    def exists(self) -> bool:
        return bool(self._call(self.redis.exists, self.key))

    def set(self, **fields: Any) -> None:
        def build(pipe: Any) -> None:
            pipe.hset(self.key, mapping={k: json.dumps(v) for k, v in fields.items()})
            pipe.expire(self.key, self.ttl_s)
        self._pipeline(build)

    def get(self, name: str, default: Any = None) -> Any:
        raw = self._call(self.redis.hget, self.key, name)
        return default if raw is None else _loads(raw)

    def fields(self) -> dict[str, Any]:
        return {k: _loads(v) for k, v in self._call(self.redis.hgetall, self.key).items()}

    @property
    def state(self) -> JobState:
        return JobState(self.get("state", JobState.PENDING))

    def set_state(self, state: JobState, reason: str | None = None) -> bool:
        """Move to `state` if `TRANSITIONS` allow it from where the job is; False if not.

        Not allowed means the job ended, or is already past that point (a redelivered task's
        late move): the caller skips its work.
        """
        fields: dict[str, Any] = {"state": state}
        if state.ended:
            fields["finished_at"] = now()
        if reason:
            fields["reason"] = reason
        args = [x for k, v in fields.items() for x in (k, json.dumps(v))]
        sources = [json.dumps(s) for s in JobState if may_move(s, state)]
        if not self._call(self.redis.eval, _SET_STATE_IF_ALLOWED, 1, self.key, len(sources),
                          *sources, *args):
            return False
        if state.ended:
            self._release()

            def announce(pipe: Any) -> None:
                pipe.rpush(self.ended_key, state.value)
                pipe.expire(self.ended_key, self.ttl_s)
            self._pipeline(announce)
        else:
            self.touch()
        return True

    def wait_ended(self, timeout_s: float) -> bool:
        """Block until the job has ended (True) or `timeout_s` passed (False), without polling.

        The end pushes onto `ended_key` after the state moved; the blocking move puts the
        element back where it was, so every waiter, now or later, sees it. A waiter polling
        the state every 10 ms spent more CPU than Redis on a 1.4 s job (docs/benchmarks.md).
        """
        moved = self._call(self.redis.blmove, self.ended_key, self.ended_key, timeout_s,
                           "RIGHT", "LEFT")
        return moved is not None

    def touch(self, at: float | None = None) -> None:
        """Mark the job as running at `at` (default now): the watchdog looks for quiet ones."""
        self._pipeline(lambda pipe: self._touch(pipe, at))

    def _touch(self, pipe: Any, at: float | None = None) -> None:
        pipe.zadd(ACTIVE, {self.job_id: time.time() if at is None else at})
        pipe.expire(ACTIVE, self.ttl_s)

    def forget(self) -> None:
        """Stop watching this job (its record expired)."""
        self._call(self.redis.zrem, ACTIVE, self.job_id)

    def claim(self, resource: str, ttl_s: int) -> str | None:
        """Hold `resource` for this job until it ends; the holder's job id when another has it."""
        guard = f"piston:claim:{resource}"
        if self._call(self.redis.set, guard, self.job_id, nx=True, ex=ttl_s):
            self.set(claim=guard)
            return None
        holder = self._call(self.redis.get, guard)
        return None if holder == self.job_id else str(holder)

    def _release(self) -> None:
        guard = self.get("claim")
        if guard and self._call(self.redis.get, guard) == self.job_id:
            self._call(self.redis.delete, guard)
        self._call(self.redis.zrem, ACTIVE, self.job_id)
        self._call(self.redis.delete, self.plan_key)

    def save_plan(self, shards: list[list[Any]]) -> None:
        """Each shard's items, kept while the job runs (what a lost shard is re-sent with)."""
        def build(pipe: Any) -> None:
            pipe.delete(self.plan_key)
            if shards:
                pipe.hset(self.plan_key, mapping={str(i): json.dumps(s)
                                                  for i, s in enumerate(shards)})
                pipe.expire(self.plan_key, self.ttl_s)
        self._pipeline(build)

    def shard_items(self, shard: int) -> list[Any]:
        raw = self._call(self.redis.hget, self.plan_key, str(shard))
        if raw is None:
            raise UnknownJob(f"job {self.job_id} has no shard {shard} (its plan expired?)")
        return list(json.loads(raw))

    def attempt(self, task: str) -> int:
        """Count one more start of `task` of this job; returns how many there have been."""
        def build(pipe: Any) -> None:
            pipe.hincrby(self.key, f"starts:{task}", 1)
            pipe.expire(self.key, self.ttl_s)
        return int(self._pipeline(build)[0])

    def progress(self, shard: int, counts: ShardCounts, worker: str | None = None) -> None:
        """Overwrite one shard's running counts (so a redelivered shard restarts them)."""
        fields: dict[str, Any] = {f"progress:{shard}": counts.model_dump(),
                                  f"beat:{shard}": time.time()}
        if worker:
            fields[f"worker:{shard}"] = worker

        def build(pipe: Any) -> None:  # one round trip: a shard reports every half second
            pipe.hset(self.key, mapping={k: json.dumps(v) for k, v in fields.items()})
            pipe.expire(self.key, self.ttl_s)
            self._touch(pipe)
        self._pipeline(build)

    def shard_done(self, shard: int, counts: ShardCounts) -> bool:
        """Record a finished shard; True once every shard is done.

        A redelivered last shard (its worker died before sending the merge) answers True
        again, so the merge is still sent; merging is idempotent.
        """
        def build(pipe: Any) -> None:
            pipe.hset(self.key, f"progress:{shard}", counts.model_dump_json())
            pipe.sadd(self.done_key, shard)
            pipe.scard(self.done_key)
            pipe.expire(self.done_key, self.ttl_s)
            pipe.hget(self.key, "shards")
            self._touch(pipe)
        answers = self._pipeline(build)
        return int(answers[2]) == int(_loads(answers[4]) if answers[4] is not None else 0)

    def shards_done(self) -> frozenset[int]:
        return frozenset(int(s) for s in self._call(self.redis.smembers, self.done_key))

    def status(self) -> dict[str, Any]:
        """Everything known about the job, with counts summed over its shards."""
        fields = self.fields()
        if not fields:
            raise UnknownJob(f"no job {self.job_id} (unknown id, or its record expired)")
        internal = ("progress:", "summary", "started_ts", "beat:", "worker:", "starts:")
        out: dict[str, Any] = {"job_id": self.job_id}
        out.update({k: v for k, v in fields.items() if not k.startswith(internal)})
        if "summary" in fields:
            summary = fields["summary"]
            if fields.get("kind") == "score":
                summary = JobSummary.model_validate(summary).model_dump(exclude_none=True)
            out.update(summary, state=fields.get("state"))  # the record's state is the truth
        elif fields.get("kind") == "score":
            counts = ShardCounts.total(ShardCounts.model_validate(v)
                                       for k, v in fields.items() if k.startswith("progress:"))
            out.update(counts.model_dump(exclude={"done"}), shards_done=len(self.shards_done()))
        return out


def quiet_jobs(redis: Any, before: float) -> list[str]:
    """Ids of running jobs whose last update was before `before` (unix time)."""
    return [str(i) for i in redis.zrangebyscore(ACTIVE, 0, before)]


def recent_statuses(redis_url: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` jobs' statuses, newest first (a job record lives a week)."""
    redis = _redis(redis_url)
    ids = [m.group(1) for key in redis.scan_iter(match=f"{_PREFIX}*", count=500)
           if (m := _RECORD_KEY.fullmatch(key))]
    pipe = redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(f"{_PREFIX}{job_id}", "submitted_at")
    submitted = dict(zip(ids, pipe.execute(), strict=True))
    found = []
    for job_id in sorted(ids, key=lambda i: submitted[i] or "", reverse=True)[:limit]:
        try:
            found.append(JobRecord(redis, job_id).status())
        except UnknownJob:
            continue  # expired between the scan and the read
    return found


def _loads(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@functools.lru_cache(maxsize=8)
def _redis(redis_url: str) -> Any:
    """One client (with its connection pool) per URL and process."""
    import redis

    return redis.Redis.from_url(redis_url, decode_responses=True, socket_connect_timeout=5,
                                socket_timeout=30, health_check_interval=30)
