"""Job records on the real Redis: an ended job stays ended."""

from __future__ import annotations

import uuid

import pytest

from piston.jobs import TRANSITIONS, JobRecord, JobState

REDIS = "redis://127.0.0.1:6379/11"


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


def test_a_missing_record_takes_no_state() -> None:
    record = JobRecord.open(REDIS, f"test-{uuid.uuid4()}")
    assert not record.set_state(JobState.FAILURE) and not record.exists()


@pytest.mark.parametrize("state", list(JobState))
def test_ended_states_go_nowhere_and_others_can_end(state: JobState) -> None:
    assert (not TRANSITIONS[state]) == state.ended
    if not state.ended:
        assert {JobState.FAILURE, JobState.REVOKED} <= TRANSITIONS[state]
