"""Retraining on real workers: a challenger that beats production is promoted; one that fails
its gates stays registered with the reason, and production does not move."""

from __future__ import annotations

import json
from typing import Any

import pytest

from piston.jobs import enqueue_retrain, enqueue_score
from piston.registry import Registry
from piston.storage import open_storage
from tests.workers.conftest import BUCKET, REDIS_URL, REGISTRY, MotoServer, Worker, wait_job

pytestmark = pytest.mark.slow


def registry(moto: MotoServer) -> Registry:
    return Registry(open_storage(REGISTRY, moto.url))


def test_a_better_challenger_is_promoted_and_workers_follow_it(
    worker: Worker, moto: MotoServer, s3_pistons: dict[str, Any], bundles: dict[str, str]
) -> None:
    reg = registry(moto)
    if reg.current() != bundles["weak"]:
        reg.promote(bundles["weak"], "tests: a weak champion", force=True)
    seen: list[dict[str, Any]] = []
    job_id = enqueue_retrain(REDIS_URL, s3_pistons["dataset"], {"epochs": 8},
                             promote_if_better=True, recipe="seed")
    result = wait_job(job_id, timeout=240, on_status=seen.append)

    assert result["state"] == "SUCCESS", result.get("reason")
    epochs = {s["progress"]["epoch"] for s in seen if isinstance(s.get("progress"), dict)}
    assert epochs & {1, 2, 3, 4}, f"no epoch progress seen: {epochs}"
    version = result["version"]
    assert result["promoted"] is True, result["reason"]
    assert result["champion"] == bundles["weak"]
    scored = result["comparison"]
    assert scored["challenger"]["images"] == scored["champion"]["images"] > 0  # same images
    assert scored["challenger"]["accuracy"] >= scored["champion"]["accuracy"]
    assert reg.current() == version and reg.history()[-1].by == "worker"
    decision = json.loads(reg.storage.read(f"decisions/{version}.json"))
    assert decision["promoted"] is True and decision["job_id"] == job_id

    # the workers follow the production pointer: the next batch uses the new bundle
    summary = wait_job(enqueue_score(REDIS_URL, f"s3://{BUCKET}/pistons/defect_1",
                                     f"s3://{BUCKET}/results/after-retrain"))
    assert summary["state"] == "SUCCESS" and summary["model_version"] == version


def test_a_challenger_refused_by_its_gates_leaves_production_alone(
    worker: Worker, moto: MotoServer, s3_pistons: dict[str, Any], bundles: dict[str, str]
) -> None:
    reg = registry(moto)
    before, moves = reg.current(), len(reg.history())
    job_id = enqueue_retrain(REDIS_URL, s3_pistons["dataset"], {"epochs": 2},  # impossible bar:
                             promote_if_better=True, min_accuracy=1.01, recipe="seed")
    result = wait_job(job_id, timeout=240)

    assert result["state"] == "SUCCESS", result.get("reason")
    assert result["promoted"] is False
    assert result["reason"].startswith("failed its quality gates: accuracy")
    assert reg.current() == before and len(reg.history()) == moves
    assert result["version"] in reg.versions()  # registered all the same
    decision = json.loads(reg.storage.read(f"decisions/{result['version']}.json"))
    assert decision["reason"] == result["reason"]


def test_a_missing_dataset_fails_with_a_reason(worker: Worker) -> None:
    result = wait_job(enqueue_retrain(REDIS_URL, f"s3://{BUCKET}/no-such-dataset"))
    assert result["state"] == "FAILURE"
    assert "does not exist or holds no files" in result["reason"]
