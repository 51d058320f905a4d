"""The job routes: queue a scoring or retraining job, read a job's status (admin token).

Paths and overrides are checked here, before anything is queued, and again by the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from starlette.requests import Request
from starlette.routing import Route

from piston import jobs
from piston.errors import PistonError
from piston.limits import check_job_paths, check_retrain
from service.routes.auth import Host, guarded
from service.schemas import JobQueued, JobStatusAnswer, RetrainBody, ScoreJobBody


def score_source(src: str) -> str:
    """An s3:// prefix as given; a folder must be absolute and exist on this server."""
    if src.startswith("s3://"):
        return src
    path = Path(src)
    if not path.is_absolute() or not path.is_dir():
        raise PistonError(f"src {src!r}: give an s3:// prefix or an absolute folder that exists"
                          " on the server", "invalid_body")
    return src


async def retrain(request: Request, host: Host, body: RetrainBody) -> JobQueued:
    """Queue a retraining job on the workers (as `piston jobs retrain`)."""
    config = host.admin
    dataset = body.dataset or config.default_dataset
    check_retrain(host.settings, dataset, body.overrides)
    job_id = await asyncio.to_thread(jobs.enqueue_retrain, config.redis_url, dataset,
                                     body.overrides, body.promote_if_better)
    return JobQueued(job_id=job_id)


async def score(request: Request, host: Host, body: ScoreJobBody) -> JobQueued:
    """Queue a batch-scoring job of every image under `src` (as `piston jobs score`)."""
    check_job_paths(host.settings, body.src, body.out)  # before `src` is looked at
    job_id = await asyncio.to_thread(jobs.enqueue_score, host.admin.redis_url,
                                     score_source(body.src), body.out, body.only_new,
                                     body.explain_flagged)
    return JobQueued(job_id=job_id)


async def job(request: Request, host: Host) -> JobStatusAnswer:
    """A job's state and progress, or its summary once it ended."""
    status = await asyncio.to_thread(jobs.job_status, host.admin.redis_url,
                                     request.path_params["job_id"])
    return JobStatusAnswer.model_validate(status)


def job_routes(get_host: Callable[[], Host]) -> list[Route]:
    return [Route("/admin/retrain", guarded(get_host, retrain), methods=["POST"]),
            Route("/jobs/score", guarded(get_host, score), methods=["POST"]),
            Route("/jobs/{job_id}", guarded(get_host, job), methods=["GET"])]
