"""The BentoML service: `bentoml serve service.app:PistonInspector` (or `piston serve`).

BentoML provides the server, workers, `/livez`, `/readyz` and `/metrics`; the piston routes
are a Starlette app mounted on it (multipart and raw-body uploads with our own 4xx
mapping), in front of one batchable inference method. No torch at import: the arbiter
process imports this module and never runs the model.
"""

from __future__ import annotations

import logging
from typing import Any

import bentoml
import numpy as np

from piston.bundle import MODEL_NAME, local_model
from piston.follow import ModelFollower
from piston.registry import Registry
from piston.settings import Settings, load_settings
from piston.storage import open_storage
from service.admin import AdminConfig
from service.console import console_app
from service.engine import Engine, Limits, NotReady
from service.limits import RequestSizeLimit
from service.metrics import service_metrics
from service.routes import build_app

log = logging.getLogger(__name__)
MAX_BATCH_SIZE = 64
# One intra-op thread per worker: torch's default (one per core) spin-waits against the event
# loop and the other workers; measured 17 vs 271 images/s at batch 1 on 2 busy cores.
# Scale with `--workers` instead.
TORCH_THREADS = 1
DEFAULT_MAX_UPLOAD = Settings.model_fields["max_upload_bytes"].default


def _instance() -> Inspector:
    svc = bentoml.get_current_service()
    if svc is None:
        raise NotReady("the service is starting")
    return svc


def _max_request_bytes() -> int:
    svc = bentoml.get_current_service()
    return int(svc.settings.max_upload_bytes) if svc is not None else int(DEFAULT_MAX_UPLOAD)


def set_torch_threads() -> None:
    """Per thread: OpenMP keeps the count per thread, so the inference thread calls it too."""
    import torch  # in the worker only; the arbiter never imports it

    torch.set_num_threads(TORCH_THREADS)


def pinned_bundle(bento: Any) -> str | None:
    """The bundle a bento was built with (None when serving from the source tree)."""
    if bento is None:
        return None
    for model in bento.info.models:
        if model.tag.name == MODEL_NAME:
            return str(model.tag.version)
    return None


class Inspector:
    """Serves the registry's production bundle, or the bundle a bento was built with."""

    def __init__(self) -> None:
        set_torch_threads()
        self.settings = load_settings()
        pinned = pinned_bundle(PistonInspector.bento)  # set by BentoML when run from a bento
        if pinned:
            follower = ModelFollower(None, pinned=pinned, model_dir=local_model(pinned).path)
        else:
            storage = open_storage(self.settings.registry, self.settings.s3_endpoint_url)
            follower = ModelFollower(Registry(storage))
        limits = Limits(self.settings.max_image_pixels, self.settings.max_batch_images,
                        MAX_BATCH_SIZE)
        self.engine = Engine(follower, limits, service_metrics(), self.settings.poll_interval_s,
                             thread_init=set_torch_threads)
        token = self.settings.admin_token.get_secret_value() if self.settings.admin_token else None
        self.admin = AdminConfig(token or None, self.settings.redis_url, self.settings.data_dir)
        self.engine.start_following()
        log.info("piston-inspector worker up (%s)", f"pinned to {pinned}" if pinned
                 else f"following {self.settings.registry}")

    def __is_ready__(self) -> bool:
        return self.engine.ready

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.engine.stop()

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=1000)
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for preprocessed (N, 3, H, W) float32 arrays.

        The same scoring the routes use (they batch in-process, see service/batching.py);
        exposed for clients that preprocess themselves.
        """
        predictor = self.engine.predictor()
        c = predictor.contract
        if batch.ndim != 4 or batch.shape[1:] != (3, c.height, c.width):
            raise bentoml.exceptions.InvalidArgument(
                f"expected arrays of shape (N, 3, {c.height}, {c.width}), got {batch.shape}")
        return predictor.probabilities(np.ascontiguousarray(batch, dtype=np.float32))


# `bentoml.service` as a call (not a decorator) keeps the class and the Service typed apart.
# BentoML's access log (a formatted line per request) is off: /metrics counts every request.
PistonInspector: bentoml.Service[Inspector] = bentoml.service(
    name="piston-inspector", workers=1, traffic={"timeout": 60},
    logging={"access": {"enabled": False}})(Inspector)
PistonInspector.mount_asgi_app(
    build_app(lambda: _instance().engine, lambda: _instance().admin), path="/")
PistonInspector.mount_asgi_app(console_app(_instance), path="/ui")  # after: /classify never sees it
PistonInspector.add_asgi_middleware(RequestSizeLimit, max_bytes=_max_request_bytes)
