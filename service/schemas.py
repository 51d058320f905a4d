"""The shapes of request bodies and answers, once: validation, `/docs.json` and docs/serving.md."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from piston.bundle import Gate
from piston.explain import Explanation
from piston.job_record import JobState
from piston.registry import MAX_REASON_CHARS, Move

EXPECTED = Field(description="the version production is at now, as you last saw it ('none'"
                 " before the first promote); a stale one is refused with 409, kind 'stale'")


REASON = Field(min_length=1, max_length=MAX_REASON_CHARS, description="why (kept in the"
               " history)")


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    reason: str = REASON
    expected: str = EXPECTED
    force: bool = False


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = REASON
    expected: str = EXPECTED
    to: str | None = None


class RetrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    promote_if_better: bool = False


class ScoreJobBody(BaseModel):
    """Like `piston jobs score SRC --out DST [--only-new]`."""

    model_config = ConfigDict(extra="forbid")
    src: str = Field(min_length=1, description="s3://bucket/prefix, or a folder on the server")
    out: str = Field(min_length=1, description="where results.jsonl and the summary go")
    only_new: bool = False
    explain_flagged: bool = Field(False, description="write a heatmap overlay of each image"
                                  " flagged for review under out/heatmaps/<key>.png")


class ErrorAnswer(BaseModel):
    """Every refusal: a reason a person can act on, and a machine-readable kind."""

    error: str
    kind: str = Field(description="empty, too_large, too_many_pixels, not_an_image, truncated,"
                      " unsupported_media_type, overloaded, not_ready, unauthorized, ...")


class DecisionAnswer(BaseModel):
    """The decision for one image, and the bundle version that made it."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    needs_review: bool = Field(description="a person should look: see review_reason")
    review_reason: str | None = Field(None, description="low_confidence (calibrated confidence"
                                      " under the bundle's review threshold) or novel (unlike"
                                      " the training images); null when accepted")
    novelty: float | None = Field(None, description="how unlike the training images this one"
                                  " is: the larger of the Mahalanobis and kNN scores, each over"
                                  " its own threshold, so over 1 is novel (bundles with one"
                                  " check: its raw score); null when the bundle has none")
    novel: bool = Field(False, description="novelty over the bundle's threshold: never accepted")
    model_version: str
    explanation: Explanation | None = Field(None, description="only with explain=true: the"
                                            " heatmap of the predicted class and its box")


class SlotAnswer(BaseModel):
    """One slot of a batch: a decision, or why this image could not be scored."""

    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    needs_review: bool | None = None
    review_reason: str | None = None
    novelty: float | None = None
    novel: bool | None = None
    model_version: str | None = None
    explanation: Explanation | None = None
    error: str | None = None
    kind: str | None = None
    status: int | None = Field(None, description="the status this image alone would get")


class BatchAnswer(BaseModel):
    results: list[SlotAnswer] = Field(description="one entry per image, in the order sent")


class ModelAnswer(BaseModel):
    """What this worker serves: version, classes, threshold, metrics, gates, batching."""

    model_config = ConfigDict(extra="forbid")  # `Engine.model_info` builds it: no stray keys
    ready: bool
    follows_registry: bool
    pinned: str | None = Field(None, description="the bento's bundle when served from one")
    poll_interval_s: float
    # Only with the admin token (`PRIVATE_MODEL_FIELDS`): they name paths, endpoints
    # and buckets.
    refused: dict[str, str] = Field(
        default_factory=dict, description="version -> why this worker did not swap it in"
        " (admin token only)")
    last_error: str | None = Field(None, description="why the last refresh failed (admin token"
                                   " only)")
    batching: dict[str, Any] = Field(description="the batcher's counters")
    # The bundle being served; all null until one is loaded.
    version: str | None = None
    classes: list[str] | None = None
    threshold: float | None = Field(None, description="the global review threshold")
    class_thresholds: dict[str, float] | None = Field(
        None, description="the review threshold of each predicted class that has its own"
        " (answers labelled so are flagged under it instead of the global one)")
    arch: str | None = None
    runtime: str | None = Field(None, description="what runs the forward pass (torch, onnx)")
    created_at: str | None = None
    metrics: dict[str, Any] | None = Field(
        None, description="headline metrics: accuracy, macro_f1, per_class, split, best_epoch")
    gates: list[Gate] | None = None
    gates_passed: bool | None = None
    parent: str | None = None
    # The engine's watchers (service/watch.py), when they run.
    drifting: bool | None = None
    drift: dict[str, Any] | None = Field(None, description="the drift watch: reasons, window")
    shadow: dict[str, Any] | None = Field(None, description="the bundle running in shadow")


PRIVATE_MODEL_FIELDS = frozenset({"refused", "last_error"})


class BundleRow(BaseModel):
    """One bundle in `GET /admin/models`."""

    version: str
    created_at: str
    arch: str
    classes: list[str]
    test_accuracy: float | None
    macro_f1: float | None
    review_share: float | None = Field(None, description="test images sent to review")
    accepted_accuracy: float | None = Field(None, description="accuracy of the accepted ones")
    ece: float | None = Field(None, description="expected calibration error (calibrated)")
    gates_passed: bool
    parent: str | None
    production: bool = Field(description="true for the bundle the pointer names")
    gates: list[Gate]
    metrics: dict[str, Any] = Field(description="headline metrics: accuracy, macro_f1,"
                                    " val_accuracy, split, best_epoch")


class ModelsAnswer(BaseModel):
    production: str | None = Field(description="the version the pointer names")
    serving: str | None = Field(description="the version the answering worker serves")
    bundles: list[BundleRow]


class HistoryAnswer(BaseModel):
    production: str | None
    moves: list[Move] = Field(description="every promote and rollback, oldest first")


class MoveAnswer(BaseModel):
    move: Move
    serving: str | None = Field(description="the version this worker serves after the move")
    shadow: str | None = Field(None, description="the shadow comparison's headline for the"
                               " promoted version, when it ran in shadow")


class ReloadAnswer(BaseModel):
    swapped: bool = Field(description="whether this worker swapped in another bundle")
    serving: str | None
    last_error: str | None


class JobQueued(BaseModel):
    job_id: str
    state: JobState = JobState.PENDING


class JobStatusAnswer(BaseModel):
    """A job's record: progress while it runs (per kind), its summary once it ended."""

    model_config = ConfigDict(extra="allow")
    job_id: str
    kind: str = Field(description="score or retrain")
    state: JobState
    submitted_at: str | None = None
    reason: str | None = Field(None, description="why it failed, was cancelled or skipped")
