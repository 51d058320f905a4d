"""Bounds on job requests, names, and secrets kept out of messages: plain functions."""

from __future__ import annotations

import pytest

from piston.errors import InputError, InvalidName, JobQueueUnavailable
from piston.jobs import job_status
from piston.limits import check_retrain, under_roots
from piston.settings import Settings, redact


def test_a_retrain_reads_only_under_its_roots_and_within_bounds(tmp_path: object) -> None:
    settings = Settings(retrain_dataset_roots=["s3://data/sets", "/srv/data"])
    check_retrain(settings, "s3://data/sets/pistons", {"epochs": 30, "input_size": [96, 96]})
    check_retrain(settings, "/srv/data/pistons", {})
    for outside in ("s3://data/other", "s3://data/setsx", "/srv/data/../../etc", "/etc",
                    "s3://data/sets/../../x"):
        with pytest.raises(InputError, match="not under an allowed root") as err:
            check_retrain(settings, outside, {})
        assert err.value.status == 403
    for overrides, message in (({"epochs": 10_000}, "epochs 10000 is over the limit of 200"),
                               ({"batch_size": 4096}, "batch_size 4096"),
                               ({"input_size": [4096, 4096]}, "input_size 4096x4096")):
        with pytest.raises(InputError, match=message):
            check_retrain(settings, "s3://data/sets/pistons", overrides)
    assert under_roots("data/ac-pistons/x", ["data/ac-pistons"])  # relative, resolved alike


def test_job_ids_are_checked_before_they_touch_a_key() -> None:
    with pytest.raises(InvalidName, match="is not a job id"):
        job_status("redis://127.0.0.1:6379/11", "../../piston:claim:x")


def test_a_redis_password_never_reaches_a_message() -> None:
    url = "redis://:hunter2-not-shown@127.0.0.1:1/0"  # nothing listens on port 1
    with pytest.raises(JobQueueUnavailable) as err:
        job_status(url, "some-job")
    assert "hunter2" not in str(err.value) and "redis://:***@127.0.0.1:1/0" in str(err.value)
    assert redact("see redis://user:pw@h:6379/0 now") == "see redis://user:***@h:6379/0 now"
