"""Bounds on job requests, names, and secrets kept out of messages: plain functions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from piston.errors import ConfigError, InputError, InvalidName, JobQueueUnavailable
from piston.jobs import job_status
from piston.limits import check_job_paths, check_retrain, under_roots
from piston.overrides import check_overrides
from piston.settings import Settings, redact
from tests.conftest import own_redis


def test_a_retrain_reads_only_under_its_roots_and_within_bounds(tmp_path: object) -> None:
    settings = Settings(retrain_dataset_roots=["s3://data/sets", "/srv/data"])
    check_retrain(settings, "s3://data/sets/pistons", {"epochs": 30, "input_size": [96, 96]})
    check_retrain(settings, "/srv/data/pistons", {})
    for outside in ("s3://data/other", "s3://data/setsx", "/srv/data/../../etc", "/etc",
                    "s3://data/sets/../../x"):
        with pytest.raises(InputError, match="not under an allowed root") as err:
            check_retrain(settings, outside, {})
        assert err.value.status == 403
    for overrides, message in (({"epochs": 10_000}, "epochs=10000"),
                               ({"batch_size": 4096}, "batch_size=4096"),
                               ({"input_size": [4096, 4096]}, "input_size=")):
        with pytest.raises(InputError, match=message):
            check_retrain(settings, "s3://data/sets/pistons", overrides)
    assert under_roots("data/ac-pistons/x", ["data/ac-pistons"])  # relative, resolved alike


def test_job_ids_are_checked_before_they_touch_a_key() -> None:
    with pytest.raises(InvalidName, match="is not a job id"):
        job_status(own_redis(11), "../../piston:claim:x")


def test_a_redis_password_never_reaches_a_message() -> None:
    url = "redis://:hunter2-not-shown@127.0.0.1:1/0"  # nothing listens on port 1
    with pytest.raises(JobQueueUnavailable) as err:
        job_status(url, "some-job")
    assert "hunter2" not in str(err.value) and "redis://:***@127.0.0.1:1/0" in str(err.value)
    assert redact("see redis://user:pw@h:6379/0 now") == "see redis://user:***@h:6379/0 now"


def test_job_paths_lie_under_the_roots_and_never_in_the_registry(tmp_path: Path) -> None:
    inside, outside = tmp_path / "roots" / "in", tmp_path / "elsewhere"
    inside.mkdir(parents=True)
    outside.mkdir()
    (inside / "link").symlink_to(outside)
    settings = Settings(job_roots=["s3://piston", str(inside)], registry="s3://piston/registry")
    check_job_paths(settings, "s3://piston/datasets/x", "s3://piston/results/y")
    check_job_paths(settings, str(inside / "a"), str(inside / "b"))
    for src, out, says in (
        ("s3://piston/in", "s3://piston/registry/history", "overlaps the model registry"),
        ("s3://piston/in", "s3://piston//registry/history", "overlaps the model registry"),
        ("s3://piston/in", "s3://piston/./registry", "overlaps the model registry"),
        ("s3://piston/in", "s3://piston", "overlaps the model registry"),  # holds it
        ("s3://piston/registry/bundles", "s3://piston/out", "overlaps the model registry"),
        ("s3://piston/in", "s3://piston/results/../registry", "without '..'"),
        ("s3://pistonx/in", "s3://piston/out", "is not under a job root"),
        ("s3://other/in", "s3://piston/out", "is not under a job root"),
        ("/", "s3://piston/out", "give a folder"),
        (str(inside / "link"), "s3://piston/out", "is not under a job root"),  # symlink out
        (str(tmp_path / "roots" / "inx"), "s3://piston/out", "is not under a job root"),
    ):
        with pytest.raises(InputError, match=re.escape(says)) as err:
            check_job_paths(settings, src, out)
        assert err.value.status == 403
    defaults = Settings(data_dir="/srv/data/pistons", results_dir="s3://piston/results")
    assert defaults.score_roots() == ["/srv/data/pistons", "s3://piston/results"]
    check_job_paths(defaults, "/srv/data/pistons/line-2", "s3://piston/results/line-2")
    with pytest.raises(InputError, match="PISTON_JOB_ROOTS"):
        check_job_paths(defaults, "/srv/data", "s3://piston/results/x")


def test_retrain_overrides_are_an_allow_list_with_bounds(tmp_path: Path) -> None:
    weights = tmp_path / "sets" / "weights.pt"
    weights.parent.mkdir()
    weights.write_text("root:x:0:0:secret-line\n")
    settings = Settings(retrain_dataset_roots=[str(tmp_path / "sets")])
    check_overrides(settings, {"epochs": 5, "max_cycles": 2, "min_steps": 100, "budget_s": 60,
                               "input_size": [96, 96], "arch": "bn_cnn", "lr": 0.003,
                               "arch_params": {"widths": [16, 32], "tta": "hflip"},
                               "augment": {"hflip": 0.5}, "pretrained_weights": str(weights),
                               "ensemble": 2})
    for overrides, says in (
        ({"epochs": 201}, "override epochs=201: must be a whole number from 1 to 200"),
        ({"epochs": 2.5}, "a whole number"),
        ({"max_cycles": 50}, "max_cycles"),
        ({"budget_s": 10**6}, "budget_s"),
        ({"max_input_side": 1024}, "over the limit of 262144 pixels"),
        ({"arch_params": {"evil": 1}}, "'arch_params.evil' is not allowed"),
        ({"augment": {"blur_sigma": 1e9}}, "augment.blur_sigma"),
        ({"recipe": "auto"}, "'recipe' is not allowed"),
        ({"ensemble": 5}, "override ensemble=5: must be a whole number from 1 to 4"),
        ({"arch_params": {"members": [{"arch": "resnet18"}] * 99}},
         "'arch_params.members' is not allowed"),
        ({"pretrained_source": "download"}, "must be one of cached, never"),
        ({"x" * 5000: 1}, "is not allowed"),
    ):
        with pytest.raises(InputError, match=re.escape(says)) as err:
            check_overrides(settings, overrides)
        assert len(str(err.value)) < 500 and "\n" not in str(err.value)
    for path in ("/etc/passwd", "/no/such/file", "s3://bucket/w.pt", str(tmp_path / "w.pt")):
        with pytest.raises(InputError) as err:
            check_overrides(settings, {"pretrained_weights": path})
        assert err.value.status == 403
        assert str(err.value) == ("override pretrained_weights must name a local file under a"
                                  " retrain root (PISTON_RETRAIN_DATASET_ROOTS)")


def test_unreadable_pretrained_weights_never_echo_the_file(tmp_path: Path) -> None:
    from piston import arch

    secret = tmp_path / "notes.pt"
    secret.write_text("TOPSECRET-7f3a:x:0:0\n")
    with pytest.raises(ConfigError) as err:
        arch.load_pretrained(arch.build("seed_cnn", 3, 16, 16), secret)
    assert "TOPSECRET" not in str(err.value) and "'T'" not in str(err.value)
    assert "not a torch state_dict file" in str(err.value)
