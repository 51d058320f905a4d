"""`piston jobs ...` as a user runs it: JSON summaries, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from piston.jobs import JobRecord
from tests.workers.conftest import BUCKET, REDIS_URL, REGISTRY, MotoServer, Worker, worker_env

pytestmark = pytest.mark.slow


def piston(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=180, cwd=Path(__file__).parents[2])


def test_score_wait_status_and_errors(worker: Worker, moto: MotoServer, work_dir: Path,
                                      s3_pistons: dict[str, Any]) -> None:
    env = worker_env(work_dir, moto.url, REGISTRY)
    out = f"s3://{BUCKET}/results/cli"
    done = piston(env, "jobs", "score", f"s3://{BUCKET}/pistons/defect_2", "--out", out,
                  "--wait", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    for key in ("job_id", "state", "total", "scored", "errors", "needs_review", "by_label",
                "images_per_second"):
        assert key in summary, key
    assert summary["state"] == "SUCCESS" and summary["total"] == summary["scored"] == 98

    status = piston(env, "jobs", "status", summary["job_id"], "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["scored"] == 98
    human = piston(env, "jobs", "status", summary["job_id"])
    assert "98 scored, 0 errors" in human.stdout

    job_id = "never-sent"  # a job nobody has picked up yet: cancelling it is certain
    JobRecord(redis.Redis.from_url(REDIS_URL, decode_responses=True), job_id).create(
        "score", src="s3://x/y", out="s3://x/z")
    cancelled = piston(env, "jobs", "cancel", job_id, "--json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["state"] == "REVOKED"

    unknown = piston(env, "jobs", "status", "no-such-job")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1] == \
        "error: no job no-such-job (unknown id, or its record expired)"
    missing = piston(env, "jobs", "score", str(work_dir / "nowhere"), "--out",
                     str(work_dir / "x"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in unknown.stderr + missing.stderr

    failed = piston(env, "jobs", "score", f"s3://{BUCKET}/nothing-here", "--out", out, "--wait")
    assert failed.returncode == 1 and "holds no images" in failed.stdout
