"""The one settings class, read once at each entry point (CLI, service, worker)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from piston.errors import ConfigError
from piston.runtime import DEFAULT_RUNTIME, RuntimeName

# Values shipped as examples or defaults somewhere: never accepted as a real secret.
PLACEHOLDERS = frozenset({
    "change-me", "change-me-too", "changeme", "change-me-to-a-long-random-secret", "secret",
    "password", "minioadmin", "admin", "redis", "piston", "token", "xxx", "todo",
})
MIN_TOKEN_CHARS = 24


class Settings(BaseSettings):
    """Deployment settings, from `PISTON_*` environment variables (and the AWS_* standards)."""

    model_config = SettingsConfigDict(env_prefix="PISTON_", extra="ignore")

    data_dir: str = Field("data/ac-pistons", description="default data set (folder, CSV or s3://)")
    registry: str = Field("registry", description="bundle registry location (folder or s3://)")
    runs_dir: Path = Field(Path("runs"), description="where training reports are written")

    # Quality gates: the production-readiness bar a bundle must pass to be promoted.
    gate_min_accuracy: float = Field(0.90, description="quality gate: least test accuracy")
    gate_min_class_f1: float = Field(0.85, description="quality gate: least F1 of every class")
    gate_min_class_recall: float = Field(
        0.80, description="quality gate: least recall of every class")

    # Input safety, shared by training, serving and batch scoring.
    # 70 MP fits the largest common area-scan inspection cameras (65 MP, 9344x7000); bigger
    # frames are refused from their header, before any pixel is decoded.
    max_image_pixels: int = Field(
        70_000_000, description="pixel cap, checked from the header before decoding")
    max_upload_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, description="largest image: upload or stored object")
    max_batch_images: int = Field(
        64, description="images per /classify_batch request (and per forward pass)")
    max_body_bytes_in_flight: int = Field(
        default=64 * 1024 * 1024, ge=1, description="request body bytes one service worker"
        " holds at once (each request counts its Content-Length, a chunked one the upload"
        " limit); past it: 503 with Retry-After. Bounds memory under upload floods")

    # Serving and scoring: what runs the network.
    runtime: RuntimeName = Field(
        DEFAULT_RUNTIME, description="onnx (the bundle's model.onnx) or torch, for the service,"
        " the scoring workers and predict; a bundle without model.onnx runs on torch")

    # Serving.
    admin_token: SecretStr | None = Field(
        None, description="bearer token for the admin routes and /jobs (unset: they answer 403);"
        " 24+ characters, not a placeholder")
    decode_threads: int = Field(default=1, ge=1, description="per worker, for large images")
    decode_queue: int = Field(
        default=4, ge=0, description="large images that may wait for a decode thread; then 503"
    )
    # Read only to refuse a placeholder at start-up; boto3 reads the credentials itself.
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias="AWS_SECRET_ACCESS_KEY",
        description="S3 secret (boto3 reads it; checked here only to refuse a placeholder)")
    poll_interval_s: float = Field(
        3.0, description="how often servers and workers check the production pointer")

    # Evidence from live traffic (shadow scoring, drift watch): counts summed in Redis.
    live_flush_s: float = Field(default=1.0, gt=0, description="how often a worker sends its"
                                " counts to Redis")
    shadow_ttl_s: int = Field(default=7 * 86400, ge=60, description="a shadow and its figures"
                              " expire this long after the last write")
    shadow_queue: int = Field(default=64, ge=1, description="images per worker waiting for the"
                              " candidate; more are dropped (and counted)")
    shadow_max_wait_s: float = Field(default=1.0, gt=0, description="an image waits this long"
                                     " for production to go idle, then is dropped as busy")
    shadow_samples: int = Field(default=24, ge=0, description="disagreeing images kept")

    drift_window_s: int = Field(default=300, ge=1, description="the drift watch's short window")
    drift_keep_windows: int = Field(default=288, ge=2, description="short windows kept (then"
                                    " they expire); day windows are kept 8 days")
    drift_min_images: int = Field(default=50, ge=1, description="a window judged needs this many")
    drift_max_class_shift: float = Field(default=0.25, ge=0, le=1, description="class mix: total"
                                         " variation distance from the test split")
    drift_max_review_shift: float = Field(default=0.15, ge=0, le=1, description="review share:"
                                          " distance from the test split's")
    drift_max_novelty_shift: float = Field(default=0.10, ge=0, le=1, description="novelty share:"
                                           " distance from the test split's")

    # Distributed jobs.
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Celery broker, result backend and job records (the password is never shown)")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto); credentials from AWS_*")
    score_shard_size: int = Field(
        default=256, ge=1, description="images per batch-scoring shard (the last ones smaller)")
    score_max_images_per_second: float = Field(
        default=0.0, ge=0, description="per worker process, to spare a shared store; 0 = unlimited"
    )
    score_schedule: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description='beat: {"s3://in/prefix": "s3://out/prefix"} (JSON)'
    )
    score_schedule_every_s: float = Field(
        default=300.0, gt=0, description="beat: seconds between two scheduled runs")
    job_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="folders and s3:// prefixes a scoring job may read"
        " (src) and write (out), JSON list; compared by path segment, never inside the"
        " registry; empty: data_dir and results_dir")
    results_dir: str = Field("results", description="the default results prefix (folder or"
                             " s3://): a job root unless PISTON_JOB_ROOTS says otherwise")
    score_time_limit_s: int = Field(default=900, ge=10, description="hard limit of one shard")
    retrain_time_limit_s: int = Field(default=3600, ge=60, description="hard limit of a retrain")
    score_decode_threads: int = Field(default=2, ge=1, description="decodes at once per process")
    job_retries: int = Field(default=3, ge=0, description="retries while the store is unreachable")
    job_retry_delay_s: float = Field(
        default=5.0, ge=0, description="seconds between two retries of an unreachable store")
    job_redis_wait_s: float = Field(
        default=300.0, ge=0, description="how long a running task waits out a Redis outage")
    job_max_worker_lost: int = Field(
        default=2, ge=0, description="a task whose process died more often than this fails")
    job_watch_every_s: float = Field(
        default=15.0, gt=0, description="how often workers look for shards lost in transit")
    job_stale_after_s: float = Field(
        default=60.0, gt=0, description="a job quiet this long with nothing queued is re-sent")

    # Retraining requests (API and queue): bounds on what one request may ask for.
    retrain_dataset_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="data set prefixes a retrain may read (JSON list);"
        " empty: only data_dir")
    retrain_max_epochs: int = Field(default=200, ge=1, description="most epochs a retrain may ask")
    retrain_max_cycles: int = Field(
        default=5, ge=1, description="most learning-rate cycles (max_cycles) a retrain may ask")
    retrain_max_steps: int = Field(
        default=20_000, ge=0, description="most steps per cycle (min_steps) a retrain may ask")
    retrain_max_batch_size: int = Field(
        default=512, ge=1, description="largest batch size a retrain may ask")
    retrain_max_input_pixels: int = Field(
        default=512 * 512, ge=1, description="largest input (height x width, and"
        " max_input_side squared) a retrain may ask; its budget_s is bounded by"
        " retrain_time_limit_s")

    @field_validator("score_schedule", mode="before")
    @classmethod
    def _schedule_json(cls, value: object) -> object:
        """JSON from the environment; empty means no schedule (compose passes unset as '')."""
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("retrain_dataset_roots", "job_roots", mode="before")
    @classmethod
    def _roots_json(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Settings:
        """Refuse example secrets and short admin tokens at start-up, saying what to set."""
        if self.admin_token is not None:
            token = self.admin_token.get_secret_value()
            if is_placeholder(token) or len(token) < MIN_TOKEN_CHARS:
                raise ValueError(
                    f"PISTON_ADMIN_TOKEN is a placeholder or shorter than {MIN_TOKEN_CHARS}"
                    " characters: set a random one (e.g. `openssl rand -hex 24`)")
        password = _url_password(self.redis_url)
        if password is not None and is_placeholder(password):
            raise ValueError("the password in PISTON_REDIS_URL is a placeholder: set a real one")
        aws = self.aws_secret_access_key
        if aws is not None and is_placeholder(aws.get_secret_value()):
            raise ValueError("AWS_SECRET_ACCESS_KEY is a placeholder: set the services' real one")
        return self

    def dataset_roots(self) -> list[str]:
        return self.retrain_dataset_roots or [self.data_dir]

    def score_roots(self) -> list[str]:
        """Where scoring jobs may read and write."""
        return self.job_roots or [self.data_dir, self.results_dir]


def is_placeholder(secret: str) -> bool:
    return secret.strip().lower() in PLACEHOLDERS or "change-me" in secret.lower()


def _url_password(url: str) -> str | None:
    match = re.match(r"[a-z0-9+]+://[^:@/]*:([^@/]*)@", url)
    return match.group(1) if match else None


def redact(text: str) -> str:
    """`text` with the password of any URL in it replaced by `***`."""
    return re.sub(r"([a-z0-9+]+://[^:@/\s]*:)[^@/\s]+@", r"\1***@", text)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment; call once at an entry point.

    A bad value is a `ConfigError` with one line naming the variable and what to set.
    """
    try:
        return Settings(**overrides)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        name = "_".join(str(p) for p in first["loc"]).upper()
        where = f"PISTON_{name}: " if name else ""
        raise ConfigError(f"bad setting: {where}{first['msg'].removeprefix('Value error, ')}") \
            from None
