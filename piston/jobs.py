"""Enqueueing jobs and reading their status without importing the workers.

The service and the CLI send tasks by name through a send-only Celery client; only worker
processes import `workers`.
"""

from __future__ import annotations

from typing import Any

SCORE_TASK = "piston.score"
RETRAIN_TASK = "piston.retrain"


def client(redis_url: str) -> Any:
    """A Celery app that only sends tasks and reads results (JSON, like the workers)."""
    from celery import Celery

    app = Celery("piston-client", broker=redis_url, backend=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return app


def enqueue_retrain(redis_url: str, dataset: str, overrides: dict[str, Any] | None = None,
                    promote_if_better: bool = False) -> str:
    """Queue a retraining job; returns its job id."""
    result = client(redis_url).send_task(
        RETRAIN_TASK,
        kwargs={"dataset": dataset, "overrides": overrides or {},
                "promote_if_better": promote_if_better},
    )
    return str(result.id)


def job_status(redis_url: str, job_id: str) -> dict[str, Any]:
    """State and progress (or result, or error) of a job."""
    from celery.result import AsyncResult

    result = AsyncResult(job_id, app=client(redis_url))
    info = result.info
    status: dict[str, Any] = {"job_id": job_id, "state": result.state}
    if isinstance(info, dict):
        status.update(info)
    elif isinstance(info, BaseException):
        status["error"] = str(info)
    return status
