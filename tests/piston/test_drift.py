"""The drift watch's arithmetic: window figures from counters, the test split, the verdict."""

from __future__ import annotations

import pytest

from piston import drift
from piston.bundle import BundleMeta
from piston.novelty import NoveltyInfo

BOUNDS = drift.DriftBounds(window_s=60, keep_windows=10, min_images=10, max_class_shift=0.25,
                           max_review_shift=0.15, max_novelty_shift=0.10)


def counts(labels: dict[str, int], review: int, novel: int | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, n in labels.items():
        for _ in range(n):
            fields = drift.image_fields(label, 0.8, False, 0.1 if novel is not None else None,
                                        False, 0.5, 0.25, 10.0)
            for k, v in fields.items():
                out[k] = out.get(k, 0) + v
    out["review"] = review
    if novel is not None:
        out["novel"] = novel
    return out


def meta(novelty: NoveltyInfo | None = None) -> BundleMeta:
    return BundleMeta(version="v1", classes=["a", "b"], arch="x", contract={"height": 8,
                      "width": 8}, metrics={"confusion_matrix": [[45, 5], [5, 45]],
                                            "support": 100,
                                            "calibration": {"review_share": 0.1}},
                      novelty=novelty)


def test_figures_of_summed_counters() -> None:
    f = drift.figures_of({**counts({"a": 6, "b": 2}, review=2), "e:truncated": 3})
    assert f.images == 8 and f.class_mix == {"a": 0.75, "b": 0.25}
    assert f.review_share == 0.25 and f.mean_confidence == pytest.approx(0.8)
    assert f.mean_brightness == pytest.approx(0.5) and f.errors == {"truncated": 3}
    assert f.novelty_share is None


def test_the_test_split_is_the_predicted_mix_and_review_share() -> None:
    b = drift.baseline(meta())
    assert b.class_mix == {"a": 0.5, "b": 0.5} and b.review_share == 0.1 and b.images == 100
    assert b.novelty_share is None  # a bundle without a novelty check
    info = NoveltyInfo(method="mahalanobis", threshold=3.0, target_share=0.05,
                       threshold_source="val", val_flagged=0.05, test_flagged=0.04, fitted_on=9)
    assert drift.baseline(meta(info)).novelty_share == 0.04


def test_a_shifted_mix_or_review_share_drifts_and_a_small_window_says_nothing() -> None:
    test = drift.baseline(meta())
    steady = drift.figures_of(counts({"a": 11, "b": 9}, review=2))
    assert drift.judge(steady, test, BOUNDS) == []
    shifted = drift.figures_of(counts({"a": 19, "b": 1}, review=2))
    assert drift.class_shift(shifted.class_mix, test.class_mix) == pytest.approx(0.45)
    assert [r.split(" moved")[0] for r in drift.judge(shifted, test, BOUNDS)] == ["class mix"]
    unsure = drift.figures_of(counts({"a": 10, "b": 10}, review=10))
    assert drift.judge(unsure, test, BOUNDS)[0].startswith("review share 0.50 vs 0.10")
    few = drift.figures_of(counts({"a": 9}, review=9))
    assert drift.judge(few, test, BOUNDS) == []


def test_windows_are_aligned_to_their_span() -> None:
    assert drift.window_start(125.0, 60) == 120
    assert drift.window_key("v1", 60, 120) == "piston:drift:v1:60:120"


def test_a_batch_job_gets_the_same_figures_beside_the_test_split() -> None:
    from piston.records import ScoreRecord

    records = [ScoreRecord(key=f"{i}.jpg", size=2048, label="a", confidence=0.9,
                           needs_review=i < 3, model_version="v1") for i in range(12)]
    records.append(ScoreRecord(key="x.jpg", model_version="v1", error="truncated: cut short"))
    figures, test, reasons = drift.job_verdict(meta(), records, BOUNDS)
    assert figures.images == 12 and figures.class_mix == {"a": 1.0}
    assert figures.review_share == 0.25 and figures.mean_kilobytes == 2.0
    assert figures.errors == {"truncated": 1} and figures.mean_brightness is None
    assert test is not None and test.class_mix == {"a": 0.5, "b": 0.5}
    assert reasons and reasons[0].startswith("class mix moved 0.50")
    assert drift.job_verdict(None, records, BOUNDS)[1:] == (None, [])
