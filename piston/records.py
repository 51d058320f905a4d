"""The typed shapes of batch scoring: one result record, a shard's counts, a job's summary.

Each is defined here once; `results.jsonl`, the job record in Redis, `jobs/<id>.json`, the
CLI and the admin API all read and write these.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, Field

from piston.drift import Figures
from piston.scoring import Decision, ImageFailure, Outcome


class ScoreRecord(BaseModel):
    """One line of `results.jsonl`: an image, the model that scored it, and what it said."""

    key: str
    etag: str = ""
    size: int = 0
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    needs_review: bool = True
    review_reason: str | None = None  # low_confidence, novel (an error needs review too)
    novelty: float | None = None
    novel: bool = False
    model_version: str
    metadata: dict[str, str] = Field(default_factory=dict)
    error: str | None = None  # "<kind>: <reason>" when the image could not be scored
    scored_at: str = ""
    job_id: str = ""
    heatmap: str | None = None  # the key of its heatmap under the output (explain_flagged)

    @classmethod
    def of(cls, outcome: Outcome, *, key: str, etag: str, size: int, model_version: str,
           metadata: dict[str, str], scored_at: str, job_id: str,
           heatmap: str | None = None) -> ScoreRecord:
        common = {"key": key, "etag": etag, "size": size, "metadata": metadata,
                  "scored_at": scored_at, "job_id": job_id, "heatmap": heatmap}
        if isinstance(outcome, ImageFailure):
            return cls(model_version=model_version, error=f"{outcome.kind}: {outcome.error}",
                       **common)
        assert isinstance(outcome, Decision)
        return cls(**outcome.model_dump(exclude={"explanation"}), **common)


class ShardCounts(BaseModel):
    """Running counts of a shard (or, summed, of a job)."""

    done: int = 0
    scored: int = 0
    errors: int = 0
    needs_review: int = 0
    novel: int = 0  # unlike the training images (they need review too)
    by_label: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, records: Iterable[ScoreRecord]) -> ShardCounts:
        counts = cls()
        for r in records:
            counts.done += 1
            if r.error or r.label is None:
                counts.errors += 1
                continue
            counts.scored += 1
            counts.needs_review += int(r.needs_review)
            counts.novel += int(r.novel)
            counts.by_label[r.label] = counts.by_label.get(r.label, 0) + 1
        return counts

    @classmethod
    def total(cls, parts: Iterable[ShardCounts]) -> ShardCounts:
        out = cls()
        for p in parts:
            out.done += p.done
            out.scored += p.scored
            out.errors += p.errors
            out.needs_review += p.needs_review
            out.novel += p.novel
            for label, n in p.by_label.items():
                out.by_label[label] = out.by_label.get(label, 0) + n
        return out


class JobSummary(BaseModel):
    """A finished scoring job: stored as `jobs/<id>.json` and in the job's record."""

    job_id: str
    state: str = Field(description="the job's `JobState` when it was written (it ended)")
    src: str
    out: str
    model_version: str | None = None
    total: int = 0
    skipped: int = 0
    scored: int = 0
    errors: int = 0
    needs_review: int = 0
    novel: int = 0
    by_label: dict[str, int] = Field(default_factory=dict)
    seconds: float = 0.0
    images_per_second: float = 0.0
    finished_at: str = ""
    reason: str | None = None
    # The drift watch's figures for this job beside the bundle's test split (piston.drift).
    figures: Figures | None = None
    test_split: Figures | None = None
    drift: list[str] = Field(default_factory=list, description="why it drifted; empty: it did not")
