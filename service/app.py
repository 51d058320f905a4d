"""The BentoML service: `bentoml serve service.app:PistonInspector` (or `piston serve`).

`/classify` and `/classify_batch` are BentoML APIs (in `/docs.json`, the Swagger page and
`bentoml.SyncHTTPClient`); their inputs are read by `service.inputs` so raw-body uploads
and our JSON errors keep working. Every other route (GET, admin, jobs, the console) lives in
`service.routes`, mounted beside them. No torch at import: the arbiter process imports this
module and never runs the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import bentoml
import numpy as np
from bentoml import get_current_service  # once: `bentoml.X` resolves lazily on every access
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from piston.bundle import MODEL_NAME, local_model
from piston.errors import NotReady, PistonError, status_of
from piston.follow import ModelFollower
from piston.registry import open_registry
from piston.scoring import ImageFailure, Outcome
from piston.settings import Settings, load_settings
from service.engine import Engine, Limits
from service.errors import error_response
from service.evidence import watch_live
from service.inputs import ClassifyBatchInput, ClassifyInput, Flag, Upload
from service.limits import RequestSizeLimit
from service.metrics import service_metrics
from service.routes import AdminConfig, build_app
from service.routes.console import console_app
from service.schemas import BatchAnswer, DecisionAnswer

log = logging.getLogger(__name__)
# One intra-op thread per worker, in either runtime: torch's default (one per core)
# spin-waits against the event loop and the other workers (docs/evaluation.md). Scale with
# `--workers` instead.
INFER_THREADS = 1
# Routes that skip BentoML's OpenTelemetry middleware (a span per request, ~1 ms of CPU);
# our own counters and BentoML's request metrics still see them.
UNTRACED = "classify,classify_batch,livez,readyz,metrics"


def set_torch_threads() -> None:
    """Per thread: OpenMP keeps the count per thread, so the inference thread calls it too."""
    import torch  # in the worker only; the arbiter never imports it

    torch.set_num_threads(INFER_THREADS)


def thread_init(settings: Settings) -> Callable[[], None] | None:
    """What the inference thread runs first: torch's thread count, on the torch runtime only
    (the ONNX path never imports torch; its session has its own thread count)."""
    return set_torch_threads if settings.runtime == "torch" else None


def pinned_bundle(bento: Any) -> str | None:
    """The bundle a bento was built with (None when serving from the source tree)."""
    if bento is None:
        return None
    for model in bento.info.models:
        if model.tag.name == MODEL_NAME:
            return str(model.tag.version)
    return None


def make_engine(settings: Settings, pinned: str | None) -> Engine:
    if pinned:
        follower = ModelFollower(None, pinned=pinned, model_dir=local_model(pinned).path,
                                 runtime=settings.runtime, threads=INFER_THREADS)
    else:
        follower = ModelFollower(open_registry(settings), runtime=settings.runtime,
                                 threads=INFER_THREADS)
    limits = Limits(settings.max_image_pixels, settings.max_batch_images,
                    settings.decode_threads, settings.decode_queue)
    return Engine(follower, limits, service_metrics(), settings.poll_interval_s,
                  thread_init=thread_init(settings))


def bind_apis(instance: Any, apis: Mapping[str, Any]) -> None:
    """Bind each BentoML API method to `instance` once, as an instance attribute.

    BentoML looks an API method up on the instance for every request (`getattr`), and the
    method's descriptor builds the bound method anew each time: `inspect.signature`, a
    wrapper and its signature, ~20 us of CPU a request (docs/benchmarks.md). The bound
    method holds no per-request state, so the one built here serves every request (an
    instance attribute shadows the descriptor, which defines no `__set__`).
    """
    for name, api in apis.items():
        if vars(type(instance)).get(name) is api:
            vars(instance)[name] = getattr(instance, name)


class Inspector:
    """Classifies photos of parts with the registry's production bundle (or a bento's own).

    Every answer names the bundle version that made it; every refusal is JSON
    `{"error", "kind"}` with a 4xx (or 503 with `Retry-After`).
    """

    def __init__(self) -> None:
        self.settings = load_settings()
        init = thread_init(self.settings)
        if init is not None:
            init()
        pinned = pinned_bundle(PistonInspector.bento)  # set by BentoML when run from a bento
        self.engine = make_engine(self.settings, pinned)
        token = self.settings.admin_token
        self.admin = AdminConfig(token.get_secret_value() or None if token else None,
                                 self.settings.redis_url, self.settings.data_dir)
        bind_apis(self, PistonInspector.apis)
        self.engine.start_following()
        watch_live(self.engine, self.settings, thread_init(self.settings))
        log.info("piston-inspector worker up (%s)", f"pinned to {pinned}" if pinned
                 else f"following {self.settings.registry}")

    def __is_ready__(self) -> bool:
        return self.engine.ready

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.engine.stop()

    @bentoml.api(route="/classify", input_spec=ClassifyInput, output_spec=DecisionAnswer)
    async def classify(self, image: Upload, explain: Flag) -> Response:
        """Classify one image: label, confidence, every class's probability, needs_review.

        Send a multipart file field `image`, or the image itself as the body with an
        `image/*` content type (`curl --data-binary @part.jpg -H 'Content-Type: image/jpeg'`).
        `explain=true` (form field or query) adds the heatmap of the predicted class.
        """
        try:
            data = await image.one()
            decision = await self.engine.classify(data, explain.value())
            return Response(decision.model_dump_json(), media_type="application/json")
        except PistonError as err:
            return self.refuse(err)
        except ClientDisconnect:  # gone, or cut off by the size limit (which answered)
            return Response(status_code=400)

    @bentoml.api(route="/classify_batch", input_spec=ClassifyBatchInput,
                 output_spec=BatchAnswer)
    async def classify_batch(self, images: Upload, explain: Flag) -> Response:
        """Classify up to PISTON_MAX_BATCH_IMAGES images (repeated multipart fields `images`).

        Results come back in order; an image that cannot be scored gets `{"error", "kind",
        "status"}` in its slot and the others are still scored. `explain=true` adds each
        image's heatmap.
        """
        try:
            files = await images.many(self.engine.limits.max_batch_images)
            outcomes = await self.engine.classify_many(files, explain.value())
            return JSONResponse({"results": [slot_answer(o) for o in outcomes]})
        except PistonError as err:
            return self.refuse(err)
        except ClientDisconnect:
            return Response(status_code=400)

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for preprocessed (N, 3, H, W) float32 arrays.

        The same scoring `/classify` uses, for clients that preprocess themselves
        (BentoML's dispatcher batches these calls).
        """
        predictor = self.engine.predictor()
        c = predictor.contract
        if batch.ndim != 4 or batch.shape[1:] != (3, c.height, c.width):
            raise bentoml.exceptions.InvalidArgument(
                f"expected arrays of shape (N, 3, {c.height}, {c.width}), got {batch.shape}")
        return predictor.probabilities(np.ascontiguousarray(batch, dtype=np.float32))

    def refuse(self, err: PistonError) -> Response:
        self.engine.error(err.kind)
        return error_response(err)


def slot_answer(outcome: Outcome) -> dict[str, Any]:
    """A batch slot: the decision, or the failure with the status this image alone would get."""
    if isinstance(outcome, ImageFailure):
        return {**outcome.model_dump(), "status": status_of(outcome.kind)}
    return outcome.model_dump()


def _instance() -> Inspector:
    svc = get_current_service()
    if svc is None:
        raise NotReady("not ready: the service is starting")
    return svc


def _settings() -> Settings:
    svc = get_current_service()
    return svc.settings if svc is not None else Settings()


def _max_request_bytes() -> int:
    return int(_settings().max_upload_bytes)


def _body_budget() -> int:
    return int(_settings().max_body_bytes_in_flight)


# `bentoml.service` as a call (not a decorator) keeps the class and the Service typed apart.
# BentoML's access log (a formatted line per request) is off: /metrics counts every request.
PistonInspector: bentoml.Service[Inspector] = bentoml.service(
    name="piston-inspector", workers=1, traffic={"timeout": 60},
    logging={"access": {"enabled": False}}, tracing={"excluded_urls": UNTRACED})(Inspector)
PistonInspector.mount_asgi_app(build_app(_instance, lambda: PistonInspector), path="/")
PistonInspector.mount_asgi_app(console_app(_instance), path="/ui")  # after: /classify never sees it
PistonInspector.add_asgi_middleware(RequestSizeLimit, max_bytes=_max_request_bytes,
                                    budget=_body_budget)
