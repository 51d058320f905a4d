"""The Celery tasks: they own a job's state changes, progress, retries and fan-out.

The logic is in plain functions (`workers.scoring`, `workers.results`, `workers.retrain`)
that take plain arguments; a task reads its job's record, calls them and writes back.
Every task is idempotent, so a redelivered or re-sent one (a worker died, Redis restarted,
the watchdog found a shard lost in transit) redoes its work without duplicating anything.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from piston import drift
from piston.drift import Figures
from piston.errors import PistonError, StorageError, StorageUnavailable
from piston.jobs import (
    FINALIZE_TASK,
    RETRAIN_TASK,
    SCORE_TASK,
    SHARD_TASK,
    JobRecord,
    JobState,
    now,
)
from piston.limits import check_job_paths, check_retrain
from piston.records import JobSummary, ScoreRecord, ShardCounts
from workers import results
from workers.runtime import Runtime, runtime
from workers.scoring import plan_job, score_shard

log = logging.getLogger(__name__)
# A shard's progress and its stop check at most this often: a batch of 16 takes ~10 ms on
# an idle core, and each is a Redis round trip (they cost 10% of the scoring's CPU per batch).
REPORT_EVERY_S = 0.5


class JobEnded(PistonError):
    """The job this task belongs to has failed or was cancelled: the task fails too."""


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _fail(rt: Runtime, record: JobRecord, reason: str) -> None:
    """End the job as failed, with why, and remove its staged parts (best effort)."""
    log.error("job %s failed: %s", record.job_id, reason)
    record.set_state(JobState.FAILURE, reason)
    _discard(rt, record)


def _retry_or_fail(task: Task, rt: Runtime, record: JobRecord, err: Exception) -> NoReturn:
    """Retry a task whose store is unreachable; otherwise fail the job, and the task with it."""
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
    _fail(rt, record, reason)
    raise JobEnded(reason) from err


def _begin(task: Task, rt: Runtime, record: JobRecord, name: str) -> None:
    """Refuse to run for an ended job, or for the (N+1)th time after N worker deaths."""
    state = record.state
    if state in (JobState.FAILURE, JobState.REVOKED):
        raise JobEnded(f"job {record.job_id} has ended: {state}")
    starts = record.attempt(name)
    lost = starts - 1 - task.request.retries  # starts that neither finished nor retried
    if lost > rt.settings.job_max_worker_lost:
        reason = (f"{name} was dead-lettered: its worker process died {lost} times while"
                  " running it (out of memory, or a crash on its input?)")
        _fail(rt, record, reason)
        raise JobEnded(reason)


@shared_task(name=SCORE_TASK, bind=True)
def score(self: Task, src: str, out: str, only_new: bool = False,
          job_id: str | None = None) -> dict[str, Any]:
    """Plan a batch-scoring job and fan it out into shard tasks (beat sends this one too)."""
    rt = runtime(self.app)
    record = rt.record(job_id or self.request.id)
    if not record.exists():  # sent by beat, not through piston.jobs.enqueue_score
        record.create("score", src=src, out=out, only_new=only_new, scheduled=True)
    try:
        _begin(self, rt, record, "plan")
        # a redelivered plan of a job already fanned out (its ack was lost) does nothing
        if record.set_state(JobState.STARTED):
            _plan(rt, record, src, out, only_new)
    except JobEnded:
        raise
    except Exception as err:
        _retry_or_fail(self, rt, record, err)
    return record.status()


def _plan(rt: Runtime, record: JobRecord, src_uri: str, out_uri: str, only_new: bool) -> None:
    check_job_paths(rt.settings, src_uri, out_uri)  # beat and other senders are checked here
    src, out = rt.storage(src_uri), rt.storage(out_uri)
    record.set(src=src_uri, out=out_uri, started_at=now(), started_ts=time.time())
    if only_new:  # scheduled runs: one at a time per output, or two would score the same images
        holder = record.claim(f"out:{out.uri}", rt.settings.score_time_limit_s * 4)
        if holder:
            summary = JobSummary(job_id=record.job_id, state=JobState.SUCCESS, src=src_uri,
                                 out=out_uri)
            record.set(shards=0, summary=summary.model_dump())
            record.set_state(JobState.SUCCESS,
                             reason=f"skipped: job {holder} is still scoring {src_uri}")
            return
    version = rt.production().meta.version
    plan = plan_job(src, out, version, only_new, rt.settings.score_shard_size)
    if not plan.shards and not plan.skipped and not only_new:  # a schedule may find nothing yet
        raise PistonError(f"{src_uri} holds no images (jpeg, png, bmp, tiff, webp, gif)")
    record.save_plan(plan.shards)
    record.set(model_version=version, total=plan.total, skipped=plan.skipped,
               shards=len(plan.shards), sent_at=time.time())
    record.set_state(JobState.PROGRESS)
    log.info("job %s: %d images to score in %d shards (%d already scored) with %s",
             record.job_id, plan.total, len(plan.shards), plan.skipped, version)
    if not plan.shards:
        _finish(rt, record)
    for index, items in enumerate(plan.shards):
        send_shard(record.job_id, index, items, version, src_uri, out_uri)


def send_plan(job_id: str, src: str, out: str, only_new: bool) -> None:
    score.apply_async(kwargs={"src": src, "out": out, "only_new": only_new, "job_id": job_id})


def send_shard(job_id: str, shard: int, items: list[Any], version: str, src: str, out: str,
               resend: int = 0) -> None:
    task_id = f"{job_id}-shard-{shard}" + (f"-r{resend}" if resend else "")
    score_shard_task.apply_async(
        kwargs={"job_id": job_id, "shard": shard, "items": items, "version": version,
                "src": src, "out": out}, task_id=task_id)


def send_finalize(job_id: str) -> None:
    score_finalize.apply_async(kwargs={"job_id": job_id})


# A shard's Celery result is never read (its job's record holds what it did): storing its
# start and its return value were two Redis writes per shard while the process waited;
# a failure is still stored.
@shared_task(name=SHARD_TASK, bind=True, ignore_result=True, store_errors_even_if_ignored=True,
             track_started=False)
def score_shard_task(self: Task, job_id: str, shard: int, items: list[Any], version: str,
                     src: str, out: str) -> dict[str, Any]:
    """Score one shard into its part file; the last shard to finish sends the merge."""
    rt = runtime(self.app)
    record = rt.record(job_id)
    if record.state is JobState.SUCCESS:
        return {"job_id": job_id, "shard": shard, "skipped": "the job has already ended"}
    try:
        _begin(self, rt, record, f"shard-{shard}")
        if _run_shard(rt, record, shard, items, version, src, out):
            _finish_here(rt, record)
    except JobEnded:
        _discard(rt, record)  # parts of shards that finished before the job ended
        raise
    except Exception as err:
        _retry_or_fail(self, rt, record, err)
    return {"job_id": job_id, "shard": shard}


def _run_shard(rt: Runtime, record: JobRecord, shard: int, items: list[Any], version: str,
               src_uri: str, out_uri: str) -> bool:
    """Score, stage the part, record the shard done; True when it was the last one."""
    s = rt.settings
    check_job_paths(s, src_uri, out_uri)
    worker = _worker_id()
    record.progress(shard, ShardCounts(), worker)
    records = score_shard(
        rt.storage(src_uri), rt.predictor(version), [(str(k), str(e), int(n)) for k, e, n in items],
        job_id=record.job_id, max_pixels=s.max_image_pixels, max_bytes=s.max_upload_bytes,
        decode_threads=s.score_decode_threads, max_per_second=s.score_max_images_per_second,
        report_every_s=REPORT_EVERY_S,
        on_batch=lambda done: record.progress(shard, ShardCounts.of(done), worker),
        should_stop=lambda: record.state.ended,
        heatmaps=rt.storage(out_uri) if record.get("explain_flagged") else None,
    )
    state = record.state
    if state is JobState.SUCCESS:  # a duplicate of a shard that was merged meanwhile
        return False
    if records is None or state.ended:
        raise JobEnded(f"job {record.job_id} ended while shard {shard} ran: {record.state}")
    rt.storage(out_uri).write(results.part_key(record.job_id, shard), results.to_jsonl(records))
    return record.shard_done(shard, ShardCounts.of(records))


def _finish_here(rt: Runtime, record: JobRecord) -> None:
    """The last shard's process merges at once; the merge task takes over when it cannot.

    Sending the merge as a task of its own cost a Celery hand-off and a task's bookkeeping
    while every other process waited (docs/benchmarks.md). A failure here (the store is down,
    the time limit) sends that task, whose retries and failure reasons are as they were; a
    process dying mid-merge leaves its shard unacknowledged, and the redelivered shard (or the
    watchdog) sends the merge again. Merging is idempotent either way.
    """
    try:
        _finish(rt, record)
    except Exception as err:
        log.warning("job %s: merging after its last shard failed (%s: %s); sending the merge",
                    record.job_id, type(err).__name__, err)
        send_finalize(record.job_id)


@shared_task(name=FINALIZE_TASK, bind=True)
def score_finalize(self: Task, job_id: str) -> dict[str, Any]:
    """Merge every shard's part into the outputs and end the job (idempotent)."""
    rt = runtime(self.app)
    record = rt.record(job_id)
    try:
        _finish(rt, record)
    except Exception as err:
        _retry_or_fail(self, rt, record, err)
    return record.status()


def _finish(rt: Runtime, record: JobRecord) -> None:
    """Under a lock per output (its normalised URI), merge the parts and write the summary.

    The summary is recorded before the parts are deleted and the job ends, so a merge
    redone after a crash in between keeps it instead of summing parts that are gone.
    """
    out = rt.storage(str(record.get("out")))
    limit = rt.settings.score_time_limit_s
    with rt.redis.lock(f"piston:lock:{out.uri}", timeout=limit, blocking_timeout=limit):
        fields = record.fields()  # read under the lock: a concurrent merge may have finished
        if JobState(fields["state"]).ended:
            return
        if "summary" not in fields:
            summary = _merge(rt, record, fields)  # writes jobs/<id>.json with the results
            record.set(summary=summary.model_dump())
            log.info("job %s done: %s", record.job_id, summary.model_dump_json())
        _discard(rt, record, out_uri=out.uri)
        record.set_state(JobState.SUCCESS)


def _merge(rt: Runtime, record: JobRecord, fields: dict[str, Any]) -> JobSummary:
    """Merge the parts; the summary (timed up to the writes) is written with the views."""
    out = rt.storage(str(fields["out"]))
    mine = results.read_parts(out, record.job_id, int(fields.get("shards", 0)))
    figures, test_split, reasons = job_drift(rt, fields.get("model_version"), mine)
    seconds = max(time.time() - float(fields.get("started_ts", time.time())), 1e-9)
    summary = JobSummary(
        job_id=record.job_id, state=JobState.SUCCESS, src=str(fields.get("src")), out=out.uri,
        model_version=fields.get("model_version"), total=int(fields.get("total", 0)),
        skipped=int(fields.get("skipped", 0)),
        **ShardCounts.of(mine).model_dump(exclude={"done"}),
        seconds=round(seconds, 3), images_per_second=round(len(mine) / seconds, 2),
        finished_at=now(), figures=figures, test_split=test_split, drift=reasons)
    results.merge_results(out, mine, also={
        f"jobs/{record.job_id}.json": summary.model_dump_json(indent=2).encode()})
    return summary


def job_drift(rt: Runtime, version: str | None, records: list[ScoreRecord],
              ) -> tuple[Figures, Figures | None, list[str]]:
    """The job's figures beside its bundle's test split (none when the bundle is unknown)."""
    meta = None
    if version:
        try:
            meta = rt.registry.meta(version)
        except PistonError as err:
            log.warning("no test split to compare job figures with: %s", err)
    return drift.job_verdict(meta, records, drift.bounds_of(rt.settings))


def _discard(rt: Runtime, record: JobRecord, out_uri: str | None = None) -> None:
    """Remove a job's staged parts, if the store lets us (best effort)."""
    out_uri = out_uri or record.get("out")
    if not out_uri:
        return
    try:
        out = rt.storage(str(out_uri))
        parts = out.list(f"_parts/{record.job_id}/")
        with ThreadPoolExecutor(min(8, len(parts)) or 1) as pool:  # each waits on the store
            list(pool.map(lambda obj: out.delete(obj.key), parts))
    except StorageError as err:
        log.warning("job %s: staged parts left under %s/_parts: %s", record.job_id, out_uri, err)


@shared_task(name=RETRAIN_TASK, bind=True)
def retrain_task(self: Task, dataset: str, overrides: dict[str, Any] | None = None,
                 promote_if_better: bool = False, min_accuracy: float | None = None,
                 recipe: str | None = None) -> dict[str, Any]:
    """Retrain, publish, and promote the new bundle only if it beats production (or ties)."""
    # training brings torch: imported here so that a scoring-only worker never loads it
    import torch

    from workers.retrain import RetrainRequest, gate_bar, retrain

    rt = runtime(self.app)
    torch.set_num_threads(rt.threads)  # the process's share of the cores (cli/jobs.py)
    record = rt.record(self.request.id)
    if not record.exists():
        record.create("retrain", dataset=dataset)
    try:
        _begin(self, rt, record, "retrain")
        if not record.set_state(JobState.STARTED):
            return record.status()
        check_retrain(rt.settings, dataset, overrides or {})

        def on_progress(info: dict[str, Any]) -> None:
            record.set(progress=info)
            record.touch()

        request = RetrainRequest(dataset, overrides or {}, promote_if_better, record.job_id,
                                 recipe)
        result = retrain(request, rt.registry, gate_bar(rt.settings, min_accuracy),
                         rt.settings.runs_dir, rt.settings.max_image_pixels,
                         rt.settings.s3_endpoint_url, on_progress)
    except JobEnded:
        raise
    except Exception as err:
        _retry_or_fail(self, rt, record, err)
    record.set(summary=result)
    record.set_state(JobState.SUCCESS)
    return result
