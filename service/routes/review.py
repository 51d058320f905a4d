"""The console's review queue routes: a job's flagged images, a thumbnail, an answer, a retrain.

Only images the job flagged can be shown or answered, so these routes cannot be used to
read or label anything else under the job's source.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import service.console.recent as recent
import service.console.review as review
from piston import jobs
from piston.errors import InputError
from piston.limits import check_retrain
from piston.storage import Storage, open_storage
from service.console.retrain import build_training_set, stamp
from service.routes.auth import Body, Host, guarded, read_body, registry_of


class Answer(Body):
    image_path: str = Field(min_length=1, max_length=1024)
    target: str = Field(min_length=1, max_length=100)


class RetrainWithReviewed(Body):
    promote_if_better: bool = False


class ScoringJob:
    """A finished scoring job's source and output, opened once per request."""

    def __init__(self, host: Host, job_id: str) -> None:
        status = recent.job_status(host.admin.redis_url, job_id)
        if status.get("kind") != "score":
            raise InputError("conflict", f"job {job_id} is a {status.get('kind')} job: only"
                             " scoring jobs have a review queue")
        if not jobs.JobState(status["state"]).ended:
            raise InputError("conflict", f"job {job_id} is {status.get('state')}: its review"
                             " queue is written when it ends")
        self.status = status
        self.id = job_id
        self.out_uri = str(status["out"]).rstrip("/")
        endpoint = host.settings.s3_endpoint_url
        self.src: Storage = open_storage(str(status["src"]), endpoint)
        self.out: Storage = open_storage(self.out_uri, endpoint)

    def flagged(self, key: str) -> None:
        if key not in {item["image_path"] for item in review.queue(self.out)}:
            raise InputError("not_found", f"{key!r} is not in the review queue of job {self.id}")

    def classes(self, host: Host) -> list[str]:
        """The classes of the model that scored the job (the answers must be one of them)."""
        version = self.status.get("model_version")
        if version:
            return list(registry_of(host.engine).meta(str(version)).classes)
        return list(host.engine.predictor().meta.classes)


def _open(host: Host, request: Request) -> ScoringJob:
    return ScoringJob(host, request.path_params["job_id"])


async def listing(request: Request, host: Host) -> Response:
    def read() -> dict[str, Any]:
        job = _open(host, request)
        return {"job_id": job.id, "src": job.status.get("src"), "out": job.out_uri,
                "model_version": job.status.get("model_version"),
                "classes": job.classes(host), "items": review.queue(job.out),
                "reviewed_file": f"{job.out_uri}/{review.REVIEWED}"}
    return JSONResponse(await asyncio.to_thread(read))


async def picture(request: Request, host: Host) -> Response:
    key = request.query_params.get("key", "")

    def read() -> bytes:
        job = _open(host, request)
        job.flagged(key)
        return review.thumbnail(job.src, key, host.settings.max_image_pixels)
    return Response(await asyncio.to_thread(read), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


async def heatmap(request: Request, host: Host) -> Response:
    """A flagged image's heatmap, drawn now by the model this worker serves (through its
    batcher: one thread runs the network)."""
    key = request.query_params.get("key", "")

    def read() -> bytes:
        job = _open(host, request)
        job.flagged(key)
        return job.src.read(key)
    decision = await host.engine.classify(await asyncio.to_thread(read), explain=True,
                                          counted=False)
    return JSONResponse({"image_path": key, "label": decision.label,
                         "model_version": decision.model_version,
                         "explanation": decision.explanation.model_dump()
                         if decision.explanation else None})


async def answer(request: Request, host: Host) -> Response:
    body = await read_body(request, Answer)

    def write() -> dict[str, Any]:
        job = _open(host, request)
        classes = job.classes(host)
        if body.target not in classes:
            raise InputError("invalid_body", f"{body.target!r} is not a class of the model"
                             f" that scored this job ({', '.join(classes)})")
        job.flagged(body.image_path)
        with recent.output_lock(host.admin.redis_url, job.out_uri):
            rows = review.append_answer(job.out, body.image_path, body.target)
        return {"image_path": body.image_path, "target": body.target, "rows": rows,
                "file": f"{job.out_uri}/{review.REVIEWED}"}
    return JSONResponse(await asyncio.to_thread(write))


async def retrain(request: Request, host: Host) -> Response:
    body = await read_body(request, RetrainWithReviewed)

    def start() -> dict[str, Any]:
        job = _open(host, request)
        reviewed = review.answers(job.out)
        dataset = host.admin.default_dataset
        dest_uri = f"{job.out_uri}/_retrain/{stamp()}"
        check_retrain(host.settings, dest_uri, {})  # the worker refuses it otherwise
        endpoint = host.settings.s3_endpoint_url
        counts = build_training_set(open_storage(dataset, endpoint), job.src, reviewed,
                                    open_storage(dest_uri, endpoint))
        job_id = jobs.enqueue_retrain(host.admin.redis_url, dest_uri, {}, body.promote_if_better)
        return {"job_id": job_id, "state": jobs.JobState.PENDING, "dataset": dest_uri,
                "base": dataset, "reviewed": len(reviewed), "images": counts}
    return JSONResponse(await asyncio.to_thread(start))


def review_routes(get_host: Callable[[], Host]) -> list[Route]:
    base = "/api/jobs/{job_id}"
    return [
        Route(f"{base}/review", guarded(get_host, listing), methods=["GET"]),
        Route(f"{base}/review", guarded(get_host, answer), methods=["POST"]),
        Route(f"{base}/thumbnail", guarded(get_host, picture), methods=["GET"]),
        Route(f"{base}/heatmap", guarded(get_host, heatmap), methods=["GET"]),
        Route(f"{base}/retrain", guarded(get_host, retrain), methods=["POST"]),
    ]
