"""Job records on the real Redis: an ended job stays ended."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from piston.jobs import TRANSITIONS, JobRecord, JobState
from tests.conftest import own_redis

REDIS = own_redis(11)


def test_a_cancel_after_the_merge_cannot_overwrite_success() -> None:
    record = JobRecord.open(REDIS, f"test-{uuid.uuid4()}")
    record.create("score", src="in", out="out")
    try:
        assert record.set_state(JobState.STARTED) and record.set_state(JobState.PROGRESS)
        assert record.set_state(JobState.SUCCESS) and record.state is JobState.SUCCESS
        assert not record.set_state(JobState.REVOKED, reason="cancelled")
        assert record.state is JobState.SUCCESS and record.get("reason") is None
    finally:
        record.redis.delete(record.key)


def test_only_the_allowed_moves_happen() -> None:
    record = JobRecord.open(REDIS, f"test-{uuid.uuid4()}")
    record.create("score", src="in", out="out")
    try:
        assert not record.set_state(JobState.PROGRESS)  # nobody planned it yet
        assert record.set_state(JobState.STARTED) and record.set_state(JobState.STARTED)
        assert record.set_state(JobState.PROGRESS)
        assert not record.set_state(JobState.STARTED)  # a late, redelivered plan: skipped
        assert record.state is JobState.PROGRESS
    finally:
        record.redis.delete(record.key)


def test_waiters_wake_when_the_job_ends_and_later_ones_return_at_once() -> None:
    record = JobRecord.open(REDIS, f"test-{uuid.uuid4()}")
    record.create("score", src="in", out="out")
    try:
        assert record.set_state(JobState.STARTED)
        assert not record.wait_ended(0.05)  # still running: the timeout
        woke: list[float] = []

        def waiter() -> None:
            if JobRecord.open(REDIS, record.job_id).wait_ended(20):
                woke.append(time.monotonic())

        threads = [threading.Thread(target=waiter) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30  # both blocked in Redis before the end
        while sum(c["cmd"] == "blmove" for c in record.redis.client_list()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ended_at = time.monotonic()
        assert record.set_state(JobState.FAILURE, reason="test")
        for t in threads:
            t.join(30)
        assert len(woke) == 2 and all(w - ended_at < 5 for w in woke)
        assert record.wait_ended(0.05) and record.wait_ended(0.05)  # and after, every time
        assert record.redis.ttl(record.ended_key) > 0
    finally:
        record.redis.delete(record.key, record.ended_key)


def test_a_missing_record_takes_no_state() -> None:
    record = JobRecord.open(REDIS, f"test-{uuid.uuid4()}")
    assert not record.set_state(JobState.FAILURE) and not record.exists()


@pytest.mark.parametrize("state", list(JobState))
def test_ended_states_go_nowhere_and_others_can_end(state: JobState) -> None:
    assert (not TRANSITIONS[state]) == state.ended
    if not state.ended:
        assert {JobState.FAILURE, JobState.REVOKED} <= TRANSITIONS[state]
