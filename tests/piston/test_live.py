"""Counts summed in Redis from many tallies, with an expiry; Redis away loses counts, not calls."""

from __future__ import annotations

import re
import secrets

import pytest

from piston.errors import LiveStoreUnavailable
from piston.live import Tally, connect, numbers, reaching
from tests.conftest import own_redis

REDIS = own_redis(11)


def test_two_tallies_add_up_and_every_key_expires() -> None:
    key, samples = f"piston:test:{secrets.token_hex(4)}", f"piston:test:{secrets.token_hex(4)}"
    client = connect(REDIS)
    try:
        first, second = Tally(), Tally()
        first.add(key, {"n": 2, "conf": 0.75}, ttl_s=60)
        second.add(key, {"n": 3, "conf": 0.5}, ttl_s=60)
        for i in range(5):
            first.push(samples, str(i), keep=3, ttl_s=60)
        first.flush(client)
        second.flush(client)
        second.flush(client)  # nothing new: adds nothing
        assert numbers(client.hgetall(key)) == {"n": 5, "conf": 1.25}
        assert client.lrange(samples, 0, -1) == ["4", "3", "2"]
        assert 0 < client.ttl(key) <= 60 and 0 < client.ttl(samples) <= 60
    finally:
        client.delete(key, samples)


def test_redis_away_drops_the_counts_and_says_why() -> None:
    tally = Tally()
    tally.add("piston:test:x", {"n": 1}, ttl_s=60)
    tally.flush(connect("redis://127.0.0.1:1/0"))  # refused: logged, never raised
    assert tally.lost == 1
    away = "redis://127.0.0.1:1/0"
    with (pytest.raises(LiveStoreUnavailable, match=re.escape(f"needs Redis at {away}")),
          reaching(away, "shadow scoring")):
        connect(away).get("x")
