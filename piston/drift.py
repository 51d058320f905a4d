"""Drift watch: what a version sees live, per window, against its own test-split figures.

The API workers count each answered image into two windows per serving version: a short one
(`drift_window_s`, 5 minutes by default) and a day. A window is a Redis hash (see
`piston.live`) named by version, span and start; it expires after `drift_keep_windows` spans,
so nothing grows without bound and the figures survive an API restart. A version is drifting
when its latest window with enough images moves past a bound (settings) from the bundle's
test split: class mix (total variation distance), review share, novelty share.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from piston.bundle import BundleMeta
from piston.live import PREFIX, numbers

if TYPE_CHECKING:
    from piston.settings import Settings

VERSIONS_KEY = f"{PREFIX}drift:versions"
NO_VERSION = "none"  # errors before any bundle was loaded
DAY_S = 86400


@dataclass(frozen=True)
class DriftBounds:
    """From the settings: how far a window may move from the test split before it drifts."""

    window_s: int
    keep_windows: int
    min_images: int
    max_class_shift: float
    max_review_shift: float
    max_novelty_shift: float


def bounds_of(settings: Settings) -> DriftBounds:
    return DriftBounds(settings.drift_window_s, settings.drift_keep_windows,
                       settings.drift_min_images, settings.drift_max_class_shift,
                       settings.drift_max_review_shift, settings.drift_max_novelty_shift)


def window_key(version: str, span_s: int, start: int) -> str:
    return f"{PREFIX}drift:{version}:{span_s}:{start}"


def window_start(at: float, span_s: int) -> int:
    return int(at // span_s * span_s)


def image_fields(label: str, confidence: float, needs_review: bool, novelty: float | None,
                 novel: bool, brightness: float, megapixels: float, kilobytes: float,
                 ) -> dict[str, float]:
    """What one answered image adds to a window (integers count, floats sum)."""
    fields: dict[str, float] = {"n": 1, f"l:{label}": 1, "conf": confidence,
                                "review": int(needs_review), "bright": brightness,
                                "mpx": megapixels, "kb": kilobytes}
    if novelty is not None:
        fields |= {"nov_n": 1, "novel": int(novel)}
    return fields


class Figures(BaseModel):
    """One window's figures (or a batch job's, or a bundle's test split where known)."""

    images: int = 0
    class_mix: dict[str, float] = Field(default_factory=dict)
    mean_confidence: float | None = None
    review_share: float | None = None
    novelty_share: float | None = None
    mean_brightness: float | None = Field(None, description="0 (black) to 1 (white)")
    mean_megapixels: float | None = None
    mean_kilobytes: float | None = None
    errors: dict[str, int] = Field(default_factory=dict)


class Window(Figures):
    start: str
    span_s: int


def figures_of(counts: Mapping[str, float]) -> Figures:
    """A window's figures from its summed counters."""
    n = int(counts.get("n", 0))
    labels = {k[2:]: int(v) for k, v in counts.items() if k.startswith("l:")}
    nov_n = int(counts.get("nov_n", 0))

    def mean(name: str) -> float | None:
        return counts.get(name, 0.0) / n if n else None

    return Figures(
        images=n, class_mix={k: v / n for k, v in sorted(labels.items())} if n else {},
        mean_confidence=mean("conf"), review_share=mean("review"),
        novelty_share=counts.get("novel", 0) / nov_n if nov_n else None,
        mean_brightness=mean("bright"), mean_megapixels=mean("mpx"), mean_kilobytes=mean("kb"),
        errors={k[2:]: int(v) for k, v in sorted(counts.items()) if k.startswith("e:")})


def baseline(meta: BundleMeta) -> Figures:
    """The bundle's own test-split figures: predicted class mix, review share, novelty share."""
    m = meta.metrics
    matrix = m.confusion_matrix
    mix: dict[str, float] = {}
    if matrix:
        predicted = [sum(row[j] for row in matrix) for j in range(len(meta.classes))]
        total = sum(predicted)
        mix = {c: p / total for c, p in zip(meta.classes, predicted, strict=True)} if total else {}
    return Figures(images=m.support, class_mix=mix,
                   review_share=m.calibration.review_share if m.calibration else None,
                   # the share of the test split the novelty check flagged (NoveltyInfo)
                   novelty_share=meta.novelty.test_flagged if meta.novelty else None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def class_shift(live: Mapping[str, float], test: Mapping[str, float]) -> float:
    """Total variation distance between two class mixes (0: same, 1: disjoint)."""
    names = set(live) | set(test)
    return 0.5 * sum(abs(live.get(c, 0.0) - test.get(c, 0.0)) for c in names)


def judge(live: Figures, test: Figures, bounds: DriftBounds) -> list[str]:
    """Why `live` drifted from `test` (empty: it did not, or has too few images to say)."""
    if live.images < bounds.min_images:
        return []
    reasons = []
    if live.class_mix and test.class_mix:
        shift = class_shift(live.class_mix, test.class_mix)
        if shift > bounds.max_class_shift:
            reasons.append(f"class mix moved {shift:.2f} (total variation) from the test split"
                           f" (bound {bounds.max_class_shift:.2f})")
    for name, bound in (("review_share", bounds.max_review_shift),
                        ("novelty_share", bounds.max_novelty_shift)):
        now, then = getattr(live, name), getattr(test, name)
        if now is not None and then is not None and abs(now - then) > bound:
            reasons.append(f"{name.replace('_', ' ')} {now:.2f} vs {then:.2f} on the test split"
                           f" (bound ±{bound:.2f})")
    return reasons


class VersionDrift(BaseModel):
    """A version's windows, its test split, and whether it drifts now (and why)."""

    version: str
    drifting: bool = False
    reasons: list[str] = Field(default_factory=list)
    judged: Window | None = Field(None, description="the window the verdict is about")
    test_split: Figures = Field(default_factory=Figures)
    windows: list[Window] = Field(default_factory=list, description="short windows, oldest first")
    days: list[Window] = Field(default_factory=list, description="day windows, oldest first")


def read_windows(client: Any, version: str, span_s: int, count: int, now: float,
                 ) -> list[Window]:
    """The last `count` windows of `span_s` (oldest first; empty ones included, as zeros)."""
    starts = [window_start(now, span_s) - i * span_s for i in reversed(range(count))]
    pipe = client.pipeline(transaction=False)
    for start in starts:
        pipe.hgetall(window_key(version, span_s, start))
    out = []
    for start, raw in zip(starts, pipe.execute(), strict=True):
        at = dt.datetime.fromtimestamp(start, dt.UTC).isoformat(timespec="seconds")
        out.append(Window(start=at, span_s=span_s, **figures_of(numbers(raw)).model_dump()))
    return out


def assess(client: Any, version: str, test: Figures, bounds: DriftBounds, now: float,
           windows: int = 12, days: int = 7) -> VersionDrift:
    """Read a version's recent windows and judge the newest one with enough images."""
    short = read_windows(client, version, bounds.window_s, windows, now)
    daily = read_windows(client, version, DAY_S, days, now)
    judged = next((w for w in reversed(short[-2:]) if w.images >= bounds.min_images), None)
    reasons = judge(judged, test, bounds) if judged is not None else []
    return VersionDrift(version=version, drifting=bool(reasons), reasons=reasons, judged=judged,
                        test_split=test, windows=short, days=daily)


def versions_seen(client: Any) -> list[str]:
    """Versions with recorded windows, most images first."""
    seen = numbers(client.hgetall(VERSIONS_KEY))
    return [v for v, _ in sorted(seen.items(), key=lambda kv: -kv[1]) if v != NO_VERSION]


def job_figures(records: Iterable[Any]) -> Figures:
    """A batch job's figures from its `ScoreRecord`s (no brightness: results do not keep it)."""
    counts: dict[str, float] = {}
    for r in records:
        if r.error or r.label is None:
            kind = str(r.error or "unknown").split(":", 1)[0]
            counts[f"e:{kind}"] = counts.get(f"e:{kind}", 0) + 1
            continue
        fields = image_fields(r.label, r.confidence or 0.0, r.needs_review, r.novelty, r.novel,
                              0.0, 0.0, r.size / 1024)
        for k, v in fields.items():
            counts[k] = counts.get(k, 0) + v
    out = figures_of(counts)
    return out.model_copy(update={"mean_brightness": None, "mean_megapixels": None})


def job_verdict(meta: BundleMeta | None, records: Iterable[Any], bounds: DriftBounds,
                ) -> tuple[Figures, Figures | None, list[str]]:
    """A batch job's figures, its bundle's test split (when known) and why they differ."""
    figures = job_figures(records)
    if meta is None:
        return figures, None, []
    test = baseline(meta)
    return figures, test, judge(figures, test, bounds)
