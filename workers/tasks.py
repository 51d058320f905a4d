"""Thin Celery tasks: parse arguments, report progress, retry when the store is down.

The logic lives in `workers.batch`, `workers.scoring` and `workers.retrain`, which the CLI,
the benchmark and the tests call directly.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from piston.errors import PistonError, StorageUnavailable
from piston.jobs import FINALIZE_TASK, RETRAIN_TASK, SCORE_TASK, SHARD_TASK, JobRecord
from training.pipeline import GateBar
from workers import batch
from workers.retrain import RetrainRequest, retrain
from workers.runtime import Runtime, runtime

log = logging.getLogger(__name__)


def _retry_or_fail(task: Task, rt: Runtime, record: JobRecord, err: Exception) -> None:
    """Retry a task whose store is unreachable; after the last retry, fail the job with why."""
    retries = rt.settings.job_retries
    if isinstance(err, StorageUnavailable) and task.request.retries < retries:
        log.warning("job %s: %s (retry %d of %d)", record.job_id, err, task.request.retries + 1,
                    retries)
        record.set(last_error=str(err), retries=task.request.retries + 1)
        raise task.retry(countdown=rt.settings.job_retry_delay_s, max_retries=retries, exc=err)
    reason = str(err) if isinstance(err, PistonError) else f"{type(err).__name__}: {err}"
    if isinstance(err, StorageUnavailable):
        reason += f" (gave up after {retries} retries)"
    if isinstance(err, SoftTimeLimitExceeded):
        reason = f"{task.name} ran over its time limit"
    log.error("job %s failed: %s", record.job_id, reason)
    record.set_state("FAILURE", reason)
    batch.discard(rt, record)
    return None


@shared_task(name=SCORE_TASK, bind=True)
def score(self: Task, src: str, out: str, only_new: bool = False) -> dict[str, Any]:
    """Plan a batch-scoring job and fan it out into shard tasks (beat sends this one too)."""
    rt = runtime(self.app)
    record = rt.record(self.request.id)
    if not record.exists():  # sent by beat, not through piston.jobs.enqueue_score
        record.create("score", src=src, out=out, scheduled=True)

    def send_shard(index: int, items: list[Any], version: str) -> None:
        score_shard.apply_async(
            kwargs={"job_id": record.job_id, "shard": index, "items": items,
                    "version": version, "src": src, "out": out},
            task_id=f"{record.job_id}-shard-{index}")

    def send_finalize() -> None:
        score_finalize.apply_async(kwargs={"job_id": record.job_id})

    try:
        batch.start(rt, record, src, out, only_new, send_shard, send_finalize)
    except Exception as err:
        _retry_or_fail(self, rt, record, err)
    return record.status()


@shared_task(name=SHARD_TASK, bind=True)
def score_shard(self: Task, job_id: str, shard: int, items: list[Any], version: str, src: str,
                out: str) -> dict[str, Any]:
    rt = runtime(self.app)
    record = rt.record(job_id)
    try:
        if batch.run_shard(rt, record, shard, items, version, src, out):
            score_finalize.apply_async(kwargs={"job_id": job_id})
    except Exception as err:
        _retry_or_fail(self, rt, record, err)
    return {"job_id": job_id, "shard": shard}


@shared_task(name=FINALIZE_TASK, bind=True)
def score_finalize(self: Task, job_id: str) -> dict[str, Any]:
    rt = runtime(self.app)
    record = rt.record(job_id)
    try:
        return batch.finish(rt, record)
    except Exception as err:
        _retry_or_fail(self, rt, record, err)
    return record.status()


@shared_task(name=RETRAIN_TASK, bind=True)
def retrain_task(self: Task, dataset: str, overrides: dict[str, Any] | None = None,
                 promote_if_better: bool = False,
                 min_accuracy: float | None = None,
                 recipe: str | None = None) -> dict[str, Any]:
    """Retrain, publish, and promote the new bundle only if it beats production (or ties)."""
    rt = runtime(self.app)
    record = rt.record(self.request.id)
    if not record.exists():
        record.create("retrain", dataset=dataset)
    if not record.set_state("STARTED"):
        return record.status()
    s = rt.settings
    # A request may raise the accuracy bar for its own bundle, never lower it.
    bar = GateBar(max(s.gate_min_accuracy, min_accuracy or 0.0), s.gate_min_class_f1,
                  s.gate_min_class_recall)

    def on_progress(info: dict[str, Any]) -> None:
        record.set(progress=info)
        self.update_state(state="PROGRESS", meta=info)

    request = RetrainRequest(dataset, overrides or {}, promote_if_better, record.job_id, recipe)
    try:
        result = retrain(request, rt.registry, bar, s.runs_dir, s.max_image_pixels,
                         s.s3_endpoint_url, on_progress)
    except Exception as err:
        _retry_or_fail(self, rt, record, err)
        return record.status()
    record.set(summary=result)
    record.set_state("SUCCESS")
    return result
