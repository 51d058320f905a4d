"""Counts from many processes added up in Redis: local tallies, flushed now and then, expiring.

Every API worker counts what it saw in memory (no Redis round trip on the request path) and a
background thread adds the counts to Redis hashes with `HINCRBY`/`HINCRBYFLOAT` in one pipeline.
Every key written here has an expiry, so nothing grows without bound, and the sums survive an
API restart. Shadow scoring and the drift watch both count through a `Tally`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from piston.errors import LiveStoreUnavailable
from piston.settings import redact

log = logging.getLogger(__name__)
PREFIX = "piston:"


@functools.lru_cache(maxsize=4)
def connect(redis_url: str) -> Any:
    """A Redis client (one pool per URL and process); strings in and out."""
    import redis

    return redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=3,
                                socket_connect_timeout=3, health_check_interval=30)


@contextmanager
def reaching(redis_url: str, what: str) -> Iterator[None]:
    """Turn a failure to reach Redis into a `LiveStoreUnavailable` that says what needs it."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as err:
        raise LiveStoreUnavailable(
            f"{what} needs Redis at {redact(redis_url)} (PISTON_REDIS_URL), which cannot be"
            f" reached: {redact(str(err))}") from None


def numbers(raw: dict[str, str]) -> dict[str, float]:
    """A hash read back: every field as a number."""
    return {k: float(v) for k, v in raw.items()}


@dataclass
class _Pending:
    counts: dict[str, dict[str, float]] = field(default_factory=dict)
    ttl: dict[str, int] = field(default_factory=dict)
    lists: list[tuple[str, str, int, int]] = field(default_factory=list)


class Tally:
    """Counts kept in memory until `flush` adds them to Redis; safe from any thread."""

    def __init__(self, max_list_items: int = 256) -> None:
        self._lock = threading.Lock()
        self._pending = _Pending()
        self.max_list_items = max_list_items
        self.lost = 0  # counts dropped because Redis could not be reached (logged)
        self._down = False

    def add(self, key: str, fields: Mapping[str, float], ttl_s: int) -> None:
        """Add each field's value to the hash `key` (which expires `ttl_s` after its last write)."""
        with self._lock:
            counts = self._pending.counts.setdefault(key, {})
            for name, value in fields.items():
                counts[name] = counts.get(name, 0) + value
            self._pending.ttl[key] = ttl_s

    def push(self, key: str, value: str, keep: int, ttl_s: int) -> None:
        """Prepend `value` to the list `key`, which keeps its newest `keep` items."""
        with self._lock:
            lists = self._pending.lists
            if len(lists) < self.max_list_items:  # bounded between flushes too
                lists.append((key, value, keep, ttl_s))

    def flush(self, client: Any) -> None:
        """Send everything counted since the last flush in one pipeline."""
        with self._lock:
            pending, self._pending = self._pending, _Pending()
        if not pending.counts and not pending.lists:
            return
        pipe = client.pipeline(transaction=False)
        for key, counts in pending.counts.items():
            for name, value in counts.items():
                if isinstance(value, int):  # counters stay integers; sums are floats
                    pipe.hincrby(key, name, value)
                else:
                    pipe.hincrbyfloat(key, name, value)
            pipe.expire(key, pending.ttl[key])
        for key, item, keep, ttl in pending.lists:
            pipe.lpush(key, item)
            pipe.ltrim(key, 0, keep - 1)
            pipe.expire(key, ttl)
        try:
            pipe.execute()
        except Exception as err:  # Redis down: these counts are lost, and say so (once)
            self.lost += sum(len(c) for c in pending.counts.values()) + len(pending.lists)
            if not self._down:
                log.warning("cannot add live counts to Redis; dropping them until it is back:"
                            " %s", redact(str(err)))
            self._down = True
            return
        if self._down:
            log.warning("Redis is back: live counts resume (%d fields were lost)", self.lost)
            self._down = False


def every(interval_s: float, stop: threading.Event, fn: Callable[[], None], name: str,
          ) -> threading.Thread:
    """Run `fn` every `interval_s` on a daemon thread until `stop` is set; errors are logged."""

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                fn()
            except Exception:  # never let a reporting thread die
                log.exception("%s failed", name)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
