"""Scheduled scoring: a real `piston beat` sends the settings' schedule; only new objects are
scored on each run, and nothing is scored twice."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from piston.settings import Settings
from piston.storage import open_storage
from tests.workers.conftest import (
    BUCKET,
    REGISTRY,
    MotoServer,
    Worker,
    read_jsonl,
    worker_env,
)
from workers.app import beat_schedule, celery_config

pytestmark = pytest.mark.slow


def test_the_schedule_and_the_no_loss_settings_come_from_the_settings() -> None:
    settings = Settings(score_schedule={"s3://a/in": "s3://a/out"}, score_schedule_every_s=60,
                        retrain_time_limit_s=7200)
    ((_, entry),) = beat_schedule(settings).items()
    assert entry["task"] == "piston.score" and entry["schedule"] == 60
    assert entry["kwargs"] == {"src": "s3://a/in", "out": "s3://a/out", "only_new": True}
    conf = celery_config(settings)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 2 and conf["accept_content"] == ["json"]
    assert conf["broker_transport_options"]["visibility_timeout"] > 7200
    assert conf["task_annotations"]["piston.retrain"]["time_limit"] == 7200


def wait_records(moto: MotoServer, out: str, count: int, timeout: float = 60) -> list[Any]:
    storage = open_storage(out, moto.url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if storage.head("results.jsonl") is not None:
            records = read_jsonl(storage.read("results.jsonl"))
            if len(records) >= count:
                return records
        time.sleep(0.2)
    raise AssertionError(f"{out} never reached {count} records")


def test_beat_scores_only_new_objects(worker: Worker, moto: MotoServer, work_dir: Path,
                                      piston_data: Path) -> None:
    client = moto.client()
    images = sorted((piston_data / "normal").glob("*.jpeg"))[:7]
    for path in images[:5]:
        client.put_object(Bucket=BUCKET, Key=f"incoming/{path.name}", Body=path.read_bytes())
    src, out = f"s3://{BUCKET}/incoming", f"s3://{BUCKET}/results/incoming"
    env = worker_env(work_dir, moto.url, REGISTRY,
                     PISTON_SCORE_SCHEDULE=json.dumps({src: out}),
                     PISTON_SCORE_SCHEDULE_EVERY_S="1")
    log = work_dir / "beat.log"
    with log.open("ab") as sink:
        beat = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "beat", "--schedule-file",
             str(work_dir / "beat-schedule")], env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        first = wait_records(moto, out, 5)
        second = subprocess.run([sys.executable, "-m", "cli.main", "beat", "--schedule-file",
                                 str(work_dir / "beat-schedule-2")], env=env, text=True,
                                capture_output=True, timeout=60)
        assert second.returncode == 2  # exactly one beat: a second one refuses to start
        assert second.stderr.strip().splitlines()[-1].startswith("error: another beat is running")
        for path in images[5:]:
            client.put_object(Bucket=BUCKET, Key=f"incoming/{path.name}", Body=path.read_bytes())
        records = wait_records(moto, out, 7)
        time.sleep(2.5)  # a few more scheduled runs, with nothing new
    finally:
        beat.terminate()
        beat.wait(20)

    storage = open_storage(out, moto.url)
    records = read_jsonl(storage.read("results.jsonl"))
    assert sorted(r["key"] for r in records) == sorted(p.name for p in images)  # once each
    assert {r["key"] for r in first} == {p.name for p in images[:5]}
    summaries = [json.loads(storage.read(o.key)) for o in storage.list("jobs/")]
    totals = sorted(s["total"] for s in summaries)
    assert len(summaries) >= 3, log.read_text()[-2000:]
    assert sum(totals) == 7 and totals[-1] == 5, totals  # no image planned by two runs
