"""Job records on the real Redis: an ended job stays ended."""

from __future__ import annotations

import uuid

from piston.jobs import JobRecord

REDIS = "redis://127.0.0.1:6379/11"


def test_a_cancel_after_the_merge_cannot_overwrite_success() -> None:
    record = JobRecord.open(REDIS, f"test-{uuid.uuid4()}")
    record.create("score", src="in", out="out")
    try:
        assert record.set_state("PROGRESS") and record.state == "PROGRESS"
        assert record.set_state("SUCCESS") and record.state == "SUCCESS"
        assert not record.set_state("REVOKED", reason="cancelled")
        assert record.state == "SUCCESS" and record.get("reason") is None
    finally:
        record.redis.delete(record.key)
