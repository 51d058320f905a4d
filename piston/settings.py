"""The one settings class, read once at each entry point (CLI, service, worker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Deployment settings, from `PISTON_*` environment variables (and the AWS_* standards)."""

    model_config = SettingsConfigDict(env_prefix="PISTON_", extra="ignore")

    data_dir: str = Field("data/ac-pistons", description="default data set (folder, CSV or s3://)")
    registry: str = Field("registry", description="bundle registry location (folder or s3://)")
    runs_dir: Path = Field(Path("runs"), description="where training reports are written")

    # Quality gates: the production-readiness bar a bundle must pass to be promoted.
    gate_min_accuracy: float = 0.90
    gate_min_class_f1: float = 0.85
    gate_min_class_recall: float = 0.80

    # Input safety, shared by training, serving and batch scoring.
    # 70 MP fits the largest common area-scan inspection cameras (65 MP, 9344x7000); bigger
    # frames are refused from their header, before any pixel is decoded.
    max_image_pixels: int = 70_000_000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_batch_images: int = 64

    # Serving.
    admin_token: SecretStr | None = None
    decode_threads: int = Field(default=1, ge=1, description="per worker, for large images")
    decode_queue: int = Field(
        default=4, ge=0, description="large images that may wait for a decode thread; then 503"
    )
    poll_interval_s: float = 3.0

    # Distributed jobs.
    redis_url: str = "redis://127.0.0.1:6379/0"
    s3_endpoint_url: str | None = None
    score_shard_size: int = Field(default=64, ge=1, description="images per batch-scoring shard")
    score_max_images_per_second: float = Field(
        default=0.0, ge=0, description="per worker process, to spare a shared store; 0 = unlimited"
    )
    score_schedule: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description='beat: {"s3://in/prefix": "s3://out/prefix"} (JSON)'
    )
    score_schedule_every_s: float = Field(default=300.0, gt=0)
    score_time_limit_s: int = Field(default=900, ge=10, description="hard limit of one shard")
    retrain_time_limit_s: int = Field(default=3600, ge=60, description="hard limit of a retrain")
    job_retries: int = Field(default=3, ge=0, description="retries while the store is unreachable")
    job_retry_delay_s: float = Field(default=5.0, ge=0)

    @field_validator("score_schedule", mode="before")
    @classmethod
    def _schedule_json(cls, value: object) -> object:
        """JSON from the environment; empty means no schedule (compose passes unset as '')."""
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value


def load_settings() -> Settings:
    """Read the settings from the environment; call once at an entry point."""
    return Settings()
